"""The one place that reads the environment.

Every setting is a field of the frozen `Settings` dataclass. Each field names its environment
variable and its command-line flag in `metadata`, so the environment, the flags and the README's
table all come from this one list. Flags override environment variables, which override defaults.

    settings = Settings.from_env()                      # environment only
    parser = argparse.ArgumentParser(); add_arguments(parser)
    settings = Settings.from_env(overrides=vars(parser.parse_args()))

A bad value raises `ValueError` with one line naming the variable (or flag) and what it accepts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

SAFETY_LEVELS = ("off", "weak", "medium", "strong", "max")
# The edit's choices, here so that the command line lists them without importing numpy and PIL
EDGE_MODES = ("matte", "feather", "hard")  # how the kept subject meets the new background (compositing)
PLACES = ("center", "left", "right", "top", "bottom")  # where the photo sits on a larger canvas (canvas)
SAFETY_CHECKER_MODES = ("off", "note", "blur", "block")  # what the post-hoc check does with a flagged output
# Segment Anything: the official PyTorch checkpoints, and the same models exported to ONNX (an
# encoder and a decoder each, run with onnxruntime; int8-quantised as rembg publishes them).
SAM_ONNX_TYPES = ("vit_h_onnx", "vit_l_onnx", "vit_b_onnx")
SAM_MODEL_TYPES = ("vit_h", "vit_l", "vit_b", *SAM_ONNX_TYPES)
# The official file name of each SAM variant (the ONNX variants': their encoder). The .pth names end
# in the start of the file's SHA-256; the ONNX names are rembg's, after the checkpoint they come from.
SAM_CHECKPOINT_NAMES = {
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_h_onnx": "sam_vit_h_4b8939.encoder.quant.onnx",
    "vit_l_onnx": "sam_vit_l_0b3195.encoder.quant.onnx",
    "vit_b_onnx": "sam_vit_b_01ec64.encoder.quant.onnx",
}
SAM_DECODER_NAMES = {  # the ONNX variants' decoders (prompt encoder + mask decoder)
    "vit_h_onnx": "sam_vit_h_4b8939.decoder.quant.onnx",
    "vit_l_onnx": "sam_vit_l_0b3195.decoder.quant.onnx",
    "vit_b_onnx": "sam_vit_b_01ec64.decoder.quant.onnx",
}
# rembg's sessions the subject model may be (pipelines/subject.py knows each one's file and checksum)
SUBJECT_MODELS = ("isnet-general-use", "u2net", "u2netp", "silueta", "birefnet-general-lite", "birefnet-general",
                  "birefnet-portrait")
DEVICES = ("auto", "cpu", "cuda", "mps")  # "cuda:N" is accepted too
DTYPES = ("auto", "float16", "bfloat16", "float32")
SCHEDULERS = ("euler", "dpmpp_2m")
# The few-step LoRA presets by name (diffusion/few_step.py holds each one's LoRA, sampler and steps)
FAST_PRESET_NAMES = ("lightning-4step", "lightning-8step", "hyper-4step", "hyper-8step-cfg", "lcm-4step")
ATTENTION = ("sdpa", "classic")  # PyTorch's fused scaled_dot_product_attention, or diffusers' plain matmuls
AUTO_ON_OFF = ("auto", "on", "off")  # auto: on where it is known to help (CUDA), on: wherever it can run
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")  # torch.compile modes for the UNet
OLLAMA_UNLOAD_MODES = ("auto", "always", "never")  # when Ollama's models leave the GPU before diffusion


SCOPES = ("edit", "server", "cluster")  # who reads a setting: every edit, the page's server, many GPUs


def _setting(default: Any, env: str, flag: str, help: str, choices: tuple[str, ...] | None = None,
             scope: str = "edit"):
    """A setting's field: its environment variable, flag, help and choices; `scope` says who reads it
    (`SCOPES`), so that a command lists only the flags it reads (`add_arguments`)."""
    return field(default=default, metadata={"env": env, "flag": flag, "help": help, "choices": choices,
                                            "scope": scope})


@dataclass(frozen=True)
class Settings:
    # --- models -------------------------------------------------------------------------------
    sdxl_model: str = _setting(
        "stabilityai/stable-diffusion-xl-base-1.0", "BACKDROP_SDXL_MODEL", "--sdxl-model",
        "SDXL: a Hugging Face model id or a local diffusers folder")
    sam_model_type: str = _setting(
        "vit_h", "BACKDROP_SAM_MODEL_TYPE", "--sam-model-type",
        "Segment Anything variant (*_onnx: its ONNX export run with onnxruntime, fast clicks on a CPU)",
        SAM_MODEL_TYPES)
    sam_checkpoint: Path | None = _setting(
        None, "BACKDROP_SAM_CHECKPOINT", "--sam-checkpoint",
        "SAM weights file, for the *_onnx variants the encoder (default: <checkpoint dir>/<official name of the variant>)")
    sam_decoder: Path | None = _setting(
        None, "BACKDROP_SAM_DECODER", "--sam-decoder",
        "the *_onnx variants' decoder file (default: <checkpoint dir>/<official decoder name of the variant>)")
    sam_download_base: str = _setting(
        "https://dl.fbaipublicfiles.com/segment_anything/", "BACKDROP_SAM_DOWNLOAD_BASE",
        "--sam-download-base", "where a missing SAM checkpoint is downloaded from")
    sam_onnx_download_base: str = _setting(
        "https://github.com/danielgatis/rembg/releases/download/v0.0.0/", "BACKDROP_SAM_ONNX_DOWNLOAD_BASE",
        "--sam-onnx-download-base", "where the *_onnx variants' missing files are downloaded from (rembg's releases)")
    sam_auto_download: bool = _setting(
        True, "BACKDROP_SAM_AUTO_DOWNLOAD", "--sam-auto-download",
        "download a missing SAM checkpoint (else fall back to GrabCut at once)")
    sam_cache_size: int = _setting(
        4, "BACKDROP_SAM_CACHE_SIZE", "--sam-cache-size",
        "how many photos' SAM image embeddings are kept")
    subject_model: str = _setting(
        "isnet-general-use", "BACKDROP_SUBJECT_MODEL", "--subject-model",
        "the model that finds the subject without clicks, and helps one click without SAM (a rembg session)",
        SUBJECT_MODELS)
    subject_auto_download: bool = _setting(
        True, "BACKDROP_SUBJECT_AUTO_DOWNLOAD", "--subject-auto-download",
        "download a missing subject model (else use one already in <checkpoint dir>/rembg/, or none)")
    # --- Ollama -------------------------------------------------------------------------------
    ollama_host: str = _setting(
        "http://127.0.0.1:11434", "OLLAMA_HOST", "--ollama-host",
        "Ollama server address (the ollama client reads OLLAMA_HOST too)")
    vision_model: str = _setting(
        "llava", "BACKDROP_VISION_MODEL", "--vision-model", "Ollama model that reads the mood")
    text_model: str = _setting(
        "llama2", "BACKDROP_TEXT_MODEL", "--text-model", "Ollama model that writes the prompt")
    ollama_timeout: float = _setting(
        60.0, "BACKDROP_OLLAMA_TIMEOUT", "--ollama-timeout",
        "seconds to wait for one Ollama reply before using the template prompt")
    ollama_keep_alive: str = _setting(
        "10m", "BACKDROP_OLLAMA_KEEP_ALIVE", "--ollama-keep-alive",
        "how long Ollama keeps a model loaded after a request")
    ollama_unload: str = _setting(
        "auto", "BACKDROP_OLLAMA_UNLOAD", "--ollama-unload",
        "before diffusion on CUDA, ask Ollama to free the GPU memory its models hold: auto (when SDXL "
        "would not fit beside them), always or never", OLLAMA_UNLOAD_MODES)
    llm_temperature: float = _setting(
        0.7, "BACKDROP_LLM_TEMPERATURE", "--llm-temperature", "sampling temperature of both LLMs")
    # --- compute ------------------------------------------------------------------------------
    device: str = _setting(
        "auto", "BACKDROP_DEVICE", "--device", "auto (CUDA when present), cpu, cuda, cuda:N or mps")
    dtype: str = _setting(
        "auto", "BACKDROP_DTYPE", "--dtype", "auto (float16 on CUDA, else float32)", DTYPES)
    cpu_offload: bool = _setting(
        False, "BACKDROP_CPU_OFFLOAD", "--cpu-offload",
        "keep only the running model on the GPU (for GPUs of about 12 GB)")
    vae_tiling: bool = _setting(
        False, "BACKDROP_VAE_TILING", "--vae-tiling", "decode large images tile by tile")
    attention: str = _setting(
        "sdpa", "BACKDROP_ATTENTION", "--attention",
        "attention kernels: sdpa (PyTorch's fused attention) or classic (plain matmuls, for comparison)",
        ATTENTION)
    channels_last: str = _setting(
        "auto", "BACKDROP_CHANNELS_LAST", "--channels-last",
        "UNet and VAE in channels-last memory layout (auto: on CUDA)", AUTO_ON_OFF)
    fuse_qkv: str = _setting(
        "auto", "BACKDROP_FUSE_QKV", "--fuse-qkv",
        "fuse the attention's query/key/value projections into one matmul (auto: on CUDA)", AUTO_ON_OFF)
    vae_bf16: str = _setting(
        "auto", "BACKDROP_VAE_BF16", "--vae-bf16",
        "VAE in bfloat16 instead of float32 (auto: on CUDA with bfloat16, where float16 would overflow)",
        AUTO_ON_OFF)
    compile: str = _setting(
        "off", "BACKDROP_COMPILE", "--compile",
        "torch.compile the UNet (reduce-overhead adds CUDA graphs); the first edit per size pays the warm-up",
        COMPILE_MODES)
    working_pixels: int = _setting(
        1024 * 1024, "BACKDROP_WORKING_PIXELS", "--working-pixels",
        "pixels of the size SDXL works at (sides are multiples of 64, aspect kept)")
    max_image_pixels: int = _setting(
        80_000_000, "BACKDROP_MAX_IMAGE_PIXELS", "--max-image-pixels",
        "largest photo accepted, in pixels (guards against decompression bombs)")
    # --- files --------------------------------------------------------------------------------
    checkpoint_dir: Path = _setting(
        ROOT / "checkpoints", "BACKDROP_CHECKPOINT_DIR", "--checkpoint-dir",
        "SAM checkpoints, subject models (rembg/) and erased encoders (erased/<name>/)")
    output_dir: Path = _setting(
        ROOT / "outputs", "BACKDROP_OUTPUT_DIR", "--output-dir", "where edited photos are saved")
    # --- the page -----------------------------------------------------------------------------
    min_safety: str = _setting(
        "off", "BACKDROP_MIN_SAFETY", "--min-safety",
        "lowest safety level the page allows (for deployments)", SAFETY_LEVELS)
    safety_checker: str = _setting(
        "note", "BACKDROP_SAFETY_CHECKER", "--safety-checker",
        "post-hoc nudity check of every output (optional nudenet): off, note, blur or block a flagged one; "
        "not off under a minimum safety", SAFETY_CHECKER_MODES)
    host: str = _setting(
        "127.0.0.1", "BACKDROP_HOST", "--host", "address the page listens on (--listen: 0.0.0.0)", scope="server")
    port: int = _setting(7860, "BACKDROP_PORT", "--port", "port the page listens on", scope="server")
    max_upload_mb: int = _setting(
        50, "BACKDROP_MAX_UPLOAD_MB", "--max-upload-mb", "largest upload the page accepts, in MB", scope="server")
    queue_size: int = _setting(
        16, "BACKDROP_QUEUE_SIZE", "--queue-size", "requests waiting for the GPU before new ones are refused", scope="server")
    cache_hours: int = _setting(
        24, "BACKDROP_CACHE_HOURS", "--cache-hours",
        "hours Gradio's cache keeps previews and served results (saved photos stay in the output folder)", scope="server")
    # --- many GPUs ----------------------------------------------------------------------------
    ray_address: str | None = _setting(
        None, "BACKDROP_RAY_ADDRESS", "--ray",
        "a Ray cluster (ray://HEAD:10001, HEAD:6379 or auto): the page and batch run edits on its workers", scope="cluster")

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> "Settings":
        """Build settings from `environ` (default `os.environ`), then apply non-None `overrides`
        (keyed by field name, as `argparse` produces them)."""
        environ = os.environ if environ is None else environ
        overrides = overrides or {}
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if overrides.get(f.name) is not None:
                values[f.name] = _parse(f, overrides[f.name], meta["flag"])
            elif environ.get(meta["env"], "") != "":
                values[f.name] = _parse(f, environ[meta["env"]], meta["env"])
        return cls(**values)

    def __post_init__(self) -> None:
        if self.min_safety != "off" and self.safety_checker == "off":
            # A deployment minimum promises more than guidance: its outputs are checked too.
            raise ValueError(f"BACKDROP_SAFETY_CHECKER=off is not allowed with BACKDROP_MIN_SAFETY="
                             f"{self.min_safety}: choose note, blur or block")
        if self.sam_checkpoint is None:
            object.__setattr__(self, "sam_checkpoint",
                               self.checkpoint_dir / SAM_CHECKPOINT_NAMES[self.sam_model_type])
        if self.sam_is_onnx and self.sam_decoder is None:
            object.__setattr__(self, "sam_decoder", self.checkpoint_dir / SAM_DECODER_NAMES[self.sam_model_type])
        elif not self.sam_is_onnx and self.sam_decoder is not None:
            raise ValueError(f"BACKDROP_SAM_DECODER is read by the ONNX SAM variants only "
                             f"({', '.join(SAM_ONNX_TYPES)}), not {self.sam_model_type}")

    @property
    def sam_is_onnx(self) -> bool:
        """SAM runs as an ONNX encoder + decoder pair (onnxruntime), not a PyTorch checkpoint."""
        return self.sam_model_type in SAM_ONNX_TYPES

    @property
    def erased_dir(self) -> Path:
        return self.checkpoint_dir / "erased"

    @property
    def subject_dir(self) -> Path:
        """Where the subject models (rembg's .onnx files) live; rembg reads them from here (U2NET_HOME)."""
        return self.checkpoint_dir / "rembg"

    @property
    def lora_dir(self) -> Path:
        """Where the Fast presets' LoRA files are looked for before the Hugging Face cache."""
        return self.checkpoint_dir / "loras"

    def resolve_device(self) -> str:
        """The torch device string: `auto` becomes `cuda` when CUDA is usable, else `cpu`."""
        if self.device != "auto":
            return self.device
        import torch  # lazily: importing settings must stay cheap

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolve_dtype(self, device: str | None = None):
        """The torch dtype: `auto` is float16 on CUDA and float32 elsewhere (CPU fp16 is slow)."""
        import torch

        device = device or self.resolve_device()
        if self.dtype == "auto":
            return torch.float16 if device.startswith("cuda") else torch.float32
        return getattr(torch, self.dtype)


def _parse(f: dataclasses.Field, raw: Any, source: str) -> Any:
    """Turn a raw environment/flag value into the field's type, or raise a one-line ValueError."""
    kind = str(f.type)
    choices = f.metadata["choices"]
    text = str(raw).strip()
    try:
        if "bool" in kind:
            if isinstance(raw, bool):
                return raw
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if "int" in kind:
            value: Any = int(text)
            if value <= 0:
                raise ValueError
            return value
        if "float" in kind:
            value = float(text)
            if not value > 0:
                raise ValueError
            return value
        if "Path" in kind:
            if not text:
                raise ValueError
            return Path(text).expanduser()
    except ValueError as err:
        expected = "true or false" if "bool" in kind else "a positive number"
        raise ValueError(f"{source}={text!r} is not valid: expected {expected}") from err
    if choices and text not in choices:
        raise ValueError(f"{source}={text!r} is not valid: expected one of {', '.join(choices)}")
    if f.name == "device" and not (text in DEVICES or text.startswith("cuda:")):
        raise ValueError(f"{source}={text!r} is not valid: expected auto, cpu, cuda, cuda:N or mps")
    if not text:
        raise ValueError(f"{source} is empty")
    return text


def add_arguments(parser: argparse.ArgumentParser, scopes: tuple[str, ...] | None = None) -> None:
    """Add one flag per setting read in `scopes` (None: all); parsed values go to
    `Settings.from_env(overrides=...)`, where a setting without a flag keeps its environment's value."""
    group = parser.add_argument_group("settings (each also read from its environment variable)")
    for f in dataclasses.fields(Settings):
        meta = f.metadata
        if scopes is not None and meta["scope"] not in scopes:
            continue
        if "bool" in str(f.type):
            group.add_argument(meta["flag"], dest=f.name, default=None,
                               action=argparse.BooleanOptionalAction,
                               help=f"{meta['help']} [{meta['env']}]")
        else:
            group.add_argument(meta["flag"], dest=f.name, default=None, metavar="VALUE",
                               help=f"{meta['help']} [{meta['env']}]")


def settings_table() -> list[tuple[str, str, str, str]]:
    """(environment variable, flag, default, meaning) for every setting: the README's table."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default
        if isinstance(default, Path):
            default = default.relative_to(ROOT) if default.is_relative_to(ROOT) else default
        rows.append((f.metadata["env"], f.metadata["flag"], str(default), f.metadata["help"]))
    return rows
