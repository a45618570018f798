"""Segment Anything models: the variants, loading a checkpoint, and the one cache of the predictor.

    SAM_VARIANTS["vit_b"]()                         # an untrained vit_b (the registry: name -> builder)
    sam = load_sam(path, "vit_b", "cuda")          # a checkpoint, checked against its variant
    predictor, notices = get_predictor(settings)   # THE shared predictor (None: use GrabCut)

The *_onnx variants (`settings.sam_is_onnx`) load an encoder + decoder pair with onnxruntime instead
(`sam_onnx.load_onnx_sam`), through the same cache, downloads and status line.

`SAM_VARIANTS` is a plain dict, like segment-anything's `sam_model_registry`: each entry builds an
untrained model. Other code (the tests' tiny model) adds its own entries; no architecture is inferred
from a checkpoint's tensor shapes. `load_sam` refuses a checkpoint that does not fit its variant with
one line naming the registered variant it does fit, if any; `get_predictor` then loads it as that
variant and says so (a vit_b file given as vit_h still gives masks).

`get_predictor` owns the only cache of the loaded model. A success is kept (until the checkpoint file
changes); a failure is not: the next call (the page asks once per photo) tries again, so a download
that failed while offline, or a checkpoint put in place later, is picked up without a restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines import downloads
from pipelines.errors import one_line
from pipelines.masks.masking import MaskPredictor
from pipelines.settings import SAM_MODEL_TYPES, SAM_ONNX_TYPES, Settings

if TYPE_CHECKING:  # pragma: no cover
    from segment_anything.modeling import Sam

log = logging.getLogger(__name__)


def _official(name: str) -> Callable[[], "Sam"]:
    def build() -> "Sam":
        from segment_anything import sam_model_registry

        # checkpoint=None: segment_anything's own loader reads without map_location (a CUDA-saved
        # file would fail on a CPU machine); `load_sam` reads the state dict itself.
        return sam_model_registry[name](checkpoint=None)

    build.__name__ = f"build_sam_{name}"
    return build


# name -> a function building the untrained model: the settings' PyTorch variants, the official
# three. The *_onnx variants need no builder: their files hold the whole graph (see sam_onnx).
SAM_VARIANTS: dict[str, Callable[[], "Sam"]] = {
    name: _official(name) for name in SAM_MODEL_TYPES if name not in SAM_ONNX_TYPES}


# ----------------------------------------------------------------------------------------------
# Loading one checkpoint
# ----------------------------------------------------------------------------------------------
def load_sam(checkpoint: Path, variant: str = "vit_h", device: str = "cpu") -> "Sam":
    """Load a Segment Anything model of a registered variant from a state-dict checkpoint.

    Args:
        checkpoint: a `.pth` file holding SAM's state dict (as the official downloads do).
        variant: a key of `SAM_VARIANTS` (vit_h, vit_l, vit_b, or one registered by other code).
        device: torch device string. Weights are read on the CPU, then moved there.

    Returns:
        The model in eval mode. Not cached: `get_predictor` keeps the one shared model.

    Raises:
        ValueError: `variant` is not registered.
        RuntimeError: one line: the file is missing, unreadable, not a SAM state dict, or does not
            fit `variant` (naming the registered variant it fits, when one does).
    """
    _check_registered(variant)
    checkpoint = Path(checkpoint)
    return _build(_read_state(checkpoint), variant, checkpoint, device)


def _check_registered(variant: str) -> None:
    if variant not in SAM_VARIANTS:
        raise ValueError(f"SAM model type {variant!r} is not one of {', '.join(SAM_VARIANTS)}")


def _read_state(checkpoint: Path) -> dict:
    """The state dict of tensors in `checkpoint`, read on the CPU (RuntimeError with one line if not)."""
    import torch

    if not checkpoint.is_file():
        raise RuntimeError(f"SAM checkpoint {checkpoint} does not exist")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files; all mean the same here
        raise RuntimeError(f"SAM checkpoint {checkpoint} is not a readable PyTorch file ({one_line(err)[:160]})") from err
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # some fine-tuning scripts wrap the state dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(f"SAM checkpoint {checkpoint} does not hold a state dict of tensors")
    return state


def _build(state: dict, variant: str, checkpoint: Path, device: str) -> "Sam":
    """`variant` (registered) with the weights of `state`, read from `checkpoint`, on `device`, in eval mode."""
    check_state_dict(state, variant, checkpoint)
    sam = SAM_VARIANTS[variant]()
    sam.load_state_dict(state, strict=True)
    return sam.to(device).eval()


class OtherVariant(RuntimeError):
    """The checkpoint is another registered variant (`fits`) than the one asked for."""

    def __init__(self, message: str, fits: str) -> None:
        super().__init__(message)
        self.fits = fits


def check_state_dict(state: dict, variant: str, source: Path | str = "the checkpoint") -> None:
    """Raise one clear line unless `state` has exactly the tensors of `variant` (names and shapes).

    The variants are built on the meta device for this (no memory, well under a second for vit_h).

    Raises:
        OtherVariant: `state` fits another registered variant (named in the message and `fits`).
        RuntimeError: `state` is not SAM's, or fits no registered variant.
    """
    marker = "image_encoder.patch_embed.proj.weight"
    if marker not in state:
        raise RuntimeError(f"SAM checkpoint {source} is not a Segment Anything checkpoint (no {marker})")
    problems = _mismatches(state, variant)
    if not problems:
        return
    fits = next((other for other in SAM_VARIANTS if other != variant and not _mismatches(state, other)), None)
    if fits is not None:
        raise OtherVariant(f"SAM checkpoint {source} is a {fits} model, not {variant}: "
                           f"set BACKDROP_SAM_MODEL_TYPE={fits}", fits)
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    raise RuntimeError(f"SAM checkpoint {source} does not fit the {variant} architecture: "
                       f"{'; '.join(problems[:3])}{more}")


def _mismatches(state: dict, variant: str) -> list[str]:
    import torch

    with torch.device("meta"):
        expected = SAM_VARIANTS[variant]().state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k} is {tuple(state[k].shape)}, expected {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    return problems


# ----------------------------------------------------------------------------------------------
# The one cache
# ----------------------------------------------------------------------------------------------
@dataclass
class _Slot:
    """What `get_predictor` knows about one (checkpoint, variant, device, cache size)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    predictor: MaskPredictor | None = None
    signature: tuple | None = None  # the checkpoint's (size, mtime) the predictor was loaded from
    failure: str | None = None  # why the last attempt failed (for the status line; never blocks a retry)
    progress: tuple[int, int] | None = None  # (bytes done, bytes total) while downloading
    decoder: Path | None = None  # the ONNX variants' decoder file, part of the signature

    def files_signature(self, path: Path) -> tuple | None:
        """The checkpoint's (and the decoder's) (size, mtime), None while one is missing."""
        signatures = [_signature(path)] + ([_signature(self.decoder)] if self.decoder is not None else [])
        return None if None in signatures else tuple(signatures)

    def current(self, path: Path) -> bool:
        """A predictor is loaded, from the files as they are now."""
        return self.predictor is not None and self.signature == self.files_signature(path)


_SLOTS: dict[tuple, _Slot] = {}
_SLOTS_LOCK = threading.Lock()


def _slot(settings: Settings) -> tuple[_Slot, Path, str]:
    path = Path(settings.sam_checkpoint).expanduser().resolve()
    decoder = Path(settings.sam_decoder).expanduser().resolve() if settings.sam_decoder is not None else None
    device = settings.resolve_device()
    key = (str(path), str(decoder), settings.sam_model_type, device, settings.sam_cache_size)
    with _SLOTS_LOCK:
        return _SLOTS.setdefault(key, _Slot(decoder=decoder)), path, device


def _signature(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def get_predictor(settings: Settings) -> tuple[MaskPredictor | None, list[str]]:
    """The shared `MaskPredictor` for these settings, or None with a notice saying why.

    The first call downloads a missing official checkpoint (when allowed) and loads it. A loaded
    predictor is returned again until the checkpoint file changes; what there is to say about it
    (`predictor.notices`) comes with the call that loaded it, and stays in `sam_status`, rather
    than with every photo or batch row. A failure is reported, not kept:
    the next call tries again. While one caller downloads, others get None at once with the
    progress in the notice (GrabCut meanwhile); while one loads (seconds), others wait for it.

    Returns:
        (predictor or None, notices). Never raises for a missing or unusable checkpoint.
    """
    slot, path, device = _slot(settings)
    predictor = slot.predictor
    if predictor is not None and slot.signature == slot.files_signature(path):
        return predictor, []
    if not slot.lock.acquire(blocking=False):
        progress = slot.progress
        if progress is not None:  # someone is downloading: GrabCut meanwhile, do not wait minutes
            done, total = progress
            return None, [f"the SAM checkpoint is downloading ({downloads.format_progress(done, total)}); "
                          "masks come from GrabCut until then"]
        slot.lock.acquire()  # someone is loading the weights: that takes seconds, wait for it
    try:
        if slot.current(path):
            return slot.predictor, []  # loaded by the caller this one waited for
        _load_into(slot, settings, path, device)
        if slot.predictor is not None:
            return slot.predictor, list(slot.predictor.notices)
        return None, [slot.failure]
    finally:
        slot.lock.release()


def _load_into(slot: _Slot, settings: Settings, path: Path, device: str) -> None:
    """Load the predictor the settings name into `slot` (or record why it failed)."""
    def on_progress(done: int, total: int) -> None:
        slot.progress = (done, total)

    slot.predictor = None
    if settings.sam_is_onnx:
        _load_onnx_into(slot, settings, path, device, on_progress)
        return
    variant, notices = settings.sam_model_type, []
    try:
        checkpoint = downloads.ensure_sam_checkpoint(settings, on_progress=on_progress)
        _check_registered(variant)
        state = _read_state(checkpoint)  # once: vit_h's is 2.5 GB
        try:
            sam = _build(state, variant, checkpoint, device)
        except OtherVariant as err:  # usable as it is: masks now, and a line saying what to set
            notices = [f"the SAM checkpoint is a {err.fits} model, not {variant}: loaded as {err.fits} "
                       f"(set BACKDROP_SAM_MODEL_TYPE={err.fits})"]
            variant = err.fits
            sam = _build(state, variant, checkpoint, device)
            log.info(notices[0])  # the caller shows the notice: logged for operators, not printed twice
    except RuntimeError as err:
        slot.failure = f"SAM unavailable: {err}"
        log.info(slot.failure)  # returned as a notice, which the caller shows once
        return
    finally:
        slot.progress = None
    slot.predictor = MaskPredictor(sam, cache_size=settings.sam_cache_size, variant=variant, notices=notices)
    slot.signature = slot.files_signature(path)
    slot.failure = None


def _load_onnx_into(slot: _Slot, settings: Settings, path: Path, device: str, on_progress) -> None:
    """As `_load_into`, for the ONNX variants: the encoder and decoder files, onnxruntime sessions."""
    from pipelines.masks.sam_onnx import load_onnx_sam

    try:
        encoder, decoder = downloads.ensure_sam_files(settings, on_progress=on_progress)
        predictor = load_onnx_sam(encoder, decoder, cache_size=settings.sam_cache_size,
                                  variant=settings.sam_model_type, device=device)
    except RuntimeError as err:
        slot.failure = f"SAM unavailable: {err}"
        log.warning(slot.failure)
        return
    finally:
        slot.progress = None
    slot.predictor = predictor
    slot.signature = slot.files_signature(path)
    slot.failure = None


def sam_status(settings: Settings) -> str:
    """One line for the page on what makes the masks, and what is missing. Loads nothing.

    Examples: "SAM vit_h on cuda", "SAM vit_h on cpu (loads on the first click)",
    "Masks without SAM: no SAM checkpoint at checkpoints/sam_vit_h_4b8939.pth (put sam_vit_h_4b8939.pth
    in checkpoints/, or run `python -m pipelines download sam`: 2.6 GB)".
    """
    slot, resolved, device = _slot(settings)
    path = Path(settings.sam_checkpoint)  # as the user wrote it, for the lines below
    variant = settings.sam_model_type
    if slot.current(resolved):
        notices = slot.predictor.notices
        return f"SAM {slot.predictor.variant} on {device}" + (f" ({notices[0]})" if notices else "")
    if slot.progress is not None:
        done, total = slot.progress
        return f"SAM {variant}: downloading {path.name} ({downloads.format_progress(done, total)})"
    hint = downloads.sam_checkpoint_hint(settings)
    missing = [p for p in downloads.sam_files(settings) if not p.is_file()]
    if slot.failure is not None and missing:
        return f"Masks without SAM: {slot.failure} ({hint}); SAM is tried again on the next photo"
    if slot.failure is not None:
        return f"Masks without SAM: {slot.failure}; SAM is tried again on the next photo"
    if not missing:
        return f"SAM {variant} on {device} (loads on the first click)"
    if settings.sam_auto_download and all(p.name in downloads.SAM_DOWNLOADS for p in missing):
        sizes = [downloads.sam_download_size(p.name) for p in missing]
        size = f", {downloads.format_size(sum(sizes))}" if None not in sizes else ""
        return f"SAM {variant} on {device} (downloads {' and '.join(p.name for p in missing)}{size}, on the first click)"
    return f"Masks without SAM: no SAM checkpoint at {' and '.join(map(str, missing))} ({hint})"
