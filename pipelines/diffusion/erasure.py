"""Concept-erased text encoders on disk and in SDXL: make, save, list, load, and swap them in.

Training lives in `pipelines/erasure_training.py`; `erase_concept` here runs it on a model folder
and saves the result (the `erase` command in `pipelines/entry/cli.py` calls it). The page and
`editing.run_edit` use the rest. An entry is a folder
`<erased dir>/<name>/` with `text_encoder/`, `text_encoder_2/` (SDXL) and `erasure.json`, the record
of what was erased from which base model.

Swapping in (`with_erased_encoders`) returns a new `SDXLComponents` with the erased pair and never
touches the original object, so switching back is bit-identical to never having switched; the UNet
and VAE are shared, not reloaded. The original encoders stay on the new object
(`original_text_encoder`, `original_text_encoder_2`): SLD's safety concept must be encoded by them,
since the erased ones are trained to map that very concept to noise. A pair whose frozen weights
(token and position embeddings, final layer norm: training never changes them) differ from the
loaded SDXL's was trained on another base model; the swap says so in a notice naming both.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.diffusion.erasure_training import BASES

if TYPE_CHECKING:
    from pipelines.diffusion.erasure_training import ErasureConfig, ErasureReport

RECORD_FILE = "erasure.json"
_NAME_RE = re.compile(r"[\w][\w-]{0,63}")


# ----------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------
def concept_slug(concept: str) -> str:
    """The default save name: lower case, runs of other characters become "-" ("Van Gogh" -> "van-gogh")."""
    slug = re.sub(r"[^\w]+", "-", concept.strip().lower()).strip("-_")
    if not slug:
        raise ValueError(f"cannot make a folder name from concept {concept!r}; pass --name")
    return slug[:64]


def check_name(name: str) -> str:
    """`name` if it is a valid entry name (letters, digits, "-", "_"); else ValueError."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"erased encoder name {name!r} is not valid: use letters, digits, '-' and '_'")
    return name



# ----------------------------------------------------------------------------------------------
# Saving, listing, loading
# ----------------------------------------------------------------------------------------------
def save_erased(dir: Path, text_encoder, text_encoder_2, record: dict, *, overwrite: bool = False) -> Path:
    """Save an erased encoder pair and its record to `dir` (`<erased dir>/<name>/`).

    Layout: `text_encoder/` and (for SDXL) `text_encoder_2/` as transformers `save_pretrained`
    folders (safetensors), and `erasure.json`. Everything is written to a hidden sibling folder
    first and renamed into place, so a crash never leaves a half-written entry that `list_erased`
    would show.

    Args:
        dir: the entry's folder; its name must be letters, digits, "-" or "_".
        text_encoder: the erased first (or only) encoder.
        text_encoder_2: the erased second encoder, or None (SD 1.4).
        record: JSON-serialisable facts about the training; must hold `concept` and `base`
            ("sdxl" or "sd14"), and `run_erase` adds type, model, date, lr, epochs, losses, report.
        overwrite: replace an existing entry instead of refusing.

    Returns:
        `dir`.

    Raises:
        ValueError: if the name or the record is not valid, or the entry exists and `overwrite` is
            False.
    """
    dir = Path(dir)
    check_name(dir.name)
    # list_erased shows only entries whose record says what was erased and for which base.
    if record.get("base") not in BASES or not record.get("concept"):
        raise ValueError(f"the record needs 'concept' and 'base' (one of {', '.join(BASES)}), got {sorted(record)}")
    if (text_encoder_2 is None) != (record["base"] == "sd14"):
        raise ValueError("an sdxl entry needs text_encoder_2; an sd14 entry has none")
    if dir.exists() and not overwrite:
        raise ValueError(f"erased encoder {dir.name!r} already exists at {dir}; use --force to replace it")
    dir.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its folder is private (0700); this one gets the usual permissions.
    staging = dir.parent / f".{dir.name}.{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir()
    try:
        text_encoder.save_pretrained(staging / "text_encoder", safe_serialization=True)
        if text_encoder_2 is not None:
            text_encoder_2.save_pretrained(staging / "text_encoder_2", safe_serialization=True)
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
        if dir.exists():
            shutil.rmtree(dir)
        staging.rename(dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dir


def _read_record(folder: Path) -> dict:
    """The parsed `erasure.json` of an entry's folder."""
    return json.loads((Path(folder) / RECORD_FILE).read_text(encoding="utf-8"))


def _valid_entry(path: Path) -> bool:
    if not _NAME_RE.fullmatch(path.name) or not (path / "text_encoder").is_dir():
        return False
    try:
        record = _read_record(path)
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("base") not in BASES or "concept" not in record:
        return False
    return record["base"] == "sd14" or (path / "text_encoder_2").is_dir()


def list_erased(erased_dir: Path) -> list[str]:
    """Names of the saved erased encoders: folders with a valid `erasure.json`, sorted.

    Returns [] if `erased_dir` does not exist.
    """
    erased_dir = Path(erased_dir)
    if not erased_dir.is_dir():
        return []
    return sorted(p.name for p in erased_dir.iterdir() if p.is_dir() and _valid_entry(p))


def _require_listed(name: str, erased_dir: Path) -> None:
    # Only names that list_erased returned are accepted: this is what keeps "../../etc" out.
    available = list_erased(erased_dir)
    if name not in available:
        raise ValueError(f"unknown erased encoder {name!r} (available: {', '.join(available) or 'none'})")


_CACHE: OrderedDict[tuple, tuple] = OrderedDict()
_CACHE_SIZE = 2  # an SDXL pair is ~1.6 GB in float16: keep the last two used
_CACHE_LOCK = threading.Lock()


def load_erased_encoders(name: str, erased_dir: Path, device: str = "cpu", dtype=None) -> tuple:
    """Load a saved erased pair, cached by (folder, its record's mtime, device, dtype).

    Args:
        name: one of `list_erased(erased_dir)`.
        erased_dir: the folder of erased encoders (`Settings.erased_dir`).
        device: where to put them.
        dtype: torch dtype to cast to; None keeps the saved one (float32).

    Returns:
        `(text_encoder, text_encoder_2)`, in eval mode without gradients; `text_encoder_2` is None
        for an SD 1.4 entry. Cached objects are shared: do not train them.

    Raises:
        ValueError: if `name` is not listed, e.g. "../../etc" or a typo.
    """
    _require_listed(name, erased_dir)
    path = (Path(erased_dir) / name).resolve()
    record = _read_record(path)
    key = (str(path), (path / RECORD_FILE).stat().st_mtime_ns, str(device), str(dtype))
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        def load(cls, sub):
            model = cls.from_pretrained(path / sub)
            model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
            return model.eval().requires_grad_(False)

        pair = (load(CLIPTextModel, "text_encoder"),
                load(CLIPTextModelWithProjection, "text_encoder_2") if record["base"] == "sdxl" else None)
        _CACHE[key] = pair
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return pair


# Parameters training never changes (see erasure_training): equal in a pair and the model it was
# trained on, different between models.
# Name endings: CLIPTextModel names them "embeddings...", CLIPTextModelWithProjection "text_model.embeddings...".
_FROZEN = ("embeddings.token_embedding.weight", "embeddings.position_embedding.weight",
           "final_layer_norm.weight", "final_layer_norm.bias")


def with_erased_encoders(components, name: str | None, erased_dir: Path) -> tuple:
    """SDXL components with the erased pair `name` in place of the text encoders.

    Returns a new object (`dataclasses.replace`); UNet, VAE, tokenizers and the rest are shared, not
    reloaded, and the original encoders stay on it as `original_text_encoder(_2)` (SLD encodes its
    concept with them). The given object is never changed, so using it again is bit-identical to
    never having switched. With `components.cpu_offload` the pair is loaded on the CPU, where
    offloaded modules rest; otherwise on `components.device`; always in `components.dtype`.

    Args:
        components: a `sdxl_models.SDXLComponents` (any dataclass with `text_encoder`,
            `text_encoder_2`, `original_text_encoder`, `original_text_encoder_2`, `model_id`,
            `device`, `dtype` and `cpu_offload` fields).
        name: one of `list_erased(erased_dir)`, or None for the original encoders.
        erased_dir: the folder of erased encoders (`Settings.erased_dir`).

    Returns:
        (components, notices): notices hold one line when the pair was trained on another base
        model than `components.model_id` (its frozen weights differ), naming both.

    Raises:
        ValueError: if the name is not listed, is an SD 1.4 entry, or its encoders' sizes do not
            match the components' encoders.
    """
    if name is None:
        return components, []
    device = "cpu" if getattr(components, "cpu_offload", False) else components.device
    te1, te2 = load_erased_encoders(name, erased_dir, device=device, dtype=components.dtype)  # checks the name
    if te2 is None:
        raise ValueError(f"erased encoder {name!r} was trained for SD 1.4, not SDXL")
    # Swapping again starts from the originals, not from the pair swapped in before.
    originals = ((components.text_encoder, components.text_encoder_2) if components.original_text_encoder is None
                 else (components.original_text_encoder, components.original_text_encoder_2))
    for new, old, label in zip((te1, te2), originals, ("text_encoder", "text_encoder_2")):
        sizes = [(s, getattr(new.config, s), getattr(old.config, s))
                 for s in ("hidden_size", "num_hidden_layers", "projection_dim")]
        if any(mine != theirs for _, mine, theirs in sizes):
            detail = ", ".join(f"{s} {mine} vs {theirs}" for s, mine, theirs in sizes)
            raise ValueError(f"erased encoder {name!r}: its {label} does not fit this SDXL model ({detail})")
    notices = []
    if not all(_same_frozen_weights(new, old) for new, old in zip((te1, te2), originals)):
        record = _read_record(Path(erased_dir) / name)
        notices.append(f"erased encoder {name!r} was trained on {record.get('base_model') or 'an unknown model'}, "
                       f"not on the loaded SDXL {components.model_id} (their text encoders differ): the concept "
                       "may not be erased and other prompts may change")
    swapped = dataclasses.replace(components, text_encoder=te1, text_encoder_2=te2,
                                  original_text_encoder=originals[0], original_text_encoder_2=originals[1])
    return swapped, notices


def _same_frozen_weights(erased, original) -> bool:
    """Whether the parameters training never changes are equal (a hub id and a local copy of it
    are the same model; comparing weights, not names, says so)."""
    import torch

    def frozen(model) -> dict:
        return {end: param for name, param in model.named_parameters() for end in _FROZEN
                if name == end or name.endswith("." + end)}

    mine, theirs = frozen(erased), frozen(original)
    if len(mine) != len(_FROZEN) or mine.keys() != theirs.keys():
        return False
    return all(mine[k].shape == theirs[k].shape
               and torch.equal(mine[k].to(device=theirs[k].device, dtype=theirs[k].dtype), theirs[k]) for k in mine)


# ----------------------------------------------------------------------------------------------
# Making an entry: erase from a model folder and save (what the `erase` command runs)
# ----------------------------------------------------------------------------------------------
def erase_concept(config: ErasureConfig, model: str, out_dir: Path, device: str, overwrite: bool = False,
                  on_progress: Callable[[int, int, float], None] | None = None) -> tuple[ErasureReport, Path]:
    """Load a model's original text encoders, erase the concept, and save the pair with its record.

    Args:
        model: diffusers folder or model id holding `tokenizer`, `text_encoder` (and for SDXL
            `tokenizer_2`, `text_encoder_2`) subfolders; recorded as `base_model`, which
            `with_erased_encoders` names when the pair meets another model.
        out_dir: `<erased dir>/<name>/`.
        device: where to train (in float32).
        overwrite: replace an existing entry.
        config: an `erasure_training.ErasureConfig`.
        on_progress: as for `erasure_training.train_erasure`.

    Returns:
        (report, the saved folder).

    Raises:
        ValueError: if the entry exists and `overwrite` is False (checked before loading anything).
    """
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from pipelines.diffusion.erasure_training import anchor_prompts, concept_prompts, train_erasure

    # 1. Check inputs: an existing entry is refused before minutes of training
    if Path(out_dir).exists() and not overwrite:
        raise ValueError(f"erased encoder {Path(out_dir).name!r} already exists at {out_dir}; use --force to replace it")

    # 2. Load the original encoders, float32 for training
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", dtype=torch.float32).to(device)
    tokenizer_2 = text_encoder_2 = None
    if config.base == "sdxl":
        tokenizer_2 = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer_2")
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            model, subfolder="text_encoder_2", dtype=torch.float32).to(device)

    # 3. Train
    report = train_erasure(text_encoder, tokenizer, config, text_encoder_2, tokenizer_2, on_progress=on_progress)

    # 4. Save with the record
    record = {
        "name": Path(out_dir).name,
        "concept": config.concept,
        "concept_type": config.concept_type,
        "base": config.base,
        "base_model": str(model),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "lr": report.lr,
        "epochs": report.epochs,
        "steps": report.steps,
        "batch_size": config.batch_size,
        "anchor_batch_size": config.anchor_batch_size,
        "seed": config.seed,
        "anchor_weight": config.anchor_weight,
        "device": str(device),
        "losses": report.losses,
        "report": {k: v for k, v in report.to_dict().items() if k not in ("losses", "concept_losses", "anchor_losses")},
        "concept_prompts": concept_prompts(config.concept, config.concept_type),
        "anchor_prompts": anchor_prompts(exclude=config.concept),
        "method": "L2 to a fixed seeded random target (per-feature mean/std of the original anchor outputs), "
                  "from the concept's first token to position 76, and pooled; anchors held at original "
                  "outputs (positions 1..76); attention/MLP weights train",
    }
    return report, save_erased(out_dir, text_encoder, text_encoder_2, record, overwrite=overwrite)
