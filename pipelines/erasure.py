"""Concept-erased text encoders: train, save, list, load, and swap them into SDXL.

The method (seed 000): prompts that contain an unwanted concept ("in the style of van gogh",
"a nude person") are regressed with an L2 loss onto a fixed random target in the representations
the diffusion model consumes, so the concept no longer conditions the image. A preservation term
holds unrelated anchor prompts at the original encoder's outputs, so the model keeps its power and
only the concept is erased.

What is regressed (`base="sdxl"`): exactly what SDXL's UNet reads from its two text encoders,

- `hidden_1`: the penultimate hidden states of `text_encoder` (`hidden_states[-2]`), (B, 77, 768),
- `hidden_2`: the penultimate hidden states of `text_encoder_2` (`hidden_states[-2]`), (B, 77, 1280),
- `pooled_2`: the pooled projection of `text_encoder_2` (`text_embeds`), (B, 1280),

and with `base="sd14"` (the seed's setting), the one thing SD 1.x reads: `hidden_1` is the
`last_hidden_state` of its single `text_encoder`. Sizes are those of the real models.

Choices, stated once:

- **Target.** One target per representation, fixed for all concept prompts and drawn from a seeded
  generator: `mean + std * N(0, 1)` of shape (77, hidden) for hidden states and (proj,) for the
  pooled output, where `mean` and `std` are per-feature statistics of the original encoder's
  outputs on the anchor prompts (positions 1..76). So every channel of the target, CLIP's outlier
  channels included, has the range of an ordinary embedding, while the target carries no meaning:
  statistics of the concept prompts would leak the concept through their mean. The loss covers
  positions 1..76, padding included, because SDXL's cross-attention reads all 77 positions and,
  under CLIP's causal mask, every position after the concept carries it. Position 0 (BOS) is left
  out: it sees only itself, so its output is the same for every prompt and cannot move for the
  concept without moving for the anchors too.
- **Loss.** Mean squared error per representation divided by that representation's mean target
  variance (`mean(std**2)`), so each representation counts alike whatever its scale; the concept
  term and the anchor term use the same units and `anchor_weight` balances them. At the start the
  concept term is about 2 (two independent draws of the same spread) and the anchor term 0.
- **What trains.** Only the self-attention and MLP weights (and biases) of the transformer layers
  that feed a consumed representation. Embeddings, layer norms and the projection are frozen, so
  the token table stays intact and anchors have less reason to drift. For SDXL's first encoder the
  last layer is frozen too: SDXL reads its penultimate states, so that layer feeds nothing it uses.
- **Schedule.** One epoch is one pass over the concept prompts, shuffled, in batches of
  `batch_size`; every step also runs `anchor_batch_size` anchors drawn at random from the 48
  (fewer per step than all of them, but more of them overall, which held unseen prompts better in
  our tiny-model runs). Adam, gradient norm clipped at 1.
  Defaults per concept type (`DEFAULT_HYPERPARAMETERS`): the seed sets the learning rate by
  concept type but gives no numbers, only `--epoch 50` in its command lines, so these are ours:
  style 1e-5 and object 1e-5 (one name, a narrow region of the embedding space), nsfw 2e-5
  (a diffuse concept spread over many words and contexts needs a larger push), 50 epochs each.
  They have not been tuned on the real SDXL weights (none are reachable from here); the printed
  report says how far the concept moved, so raise `--lr` or `--epochs` if it moved too little.
- **Precision.** Training runs in float32 (Adam in float16 is unstable); the encoders are saved in
  float32 and cast to the pipeline's dtype when loaded. Real SDXL encoders need about 16 GB of GPU
  memory to train this way.

Swapping in (`with_erased_encoders`) returns a new `SDXLComponents` with the erased pair and never
touches the original object, so switching back is bit-identical to never having switched; the UNet
and VAE are shared, not reloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shutil
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

CONCEPT_TYPES = ("style", "object", "nsfw")
BASES = ("sdxl", "sd14")
RECORD_FILE = "erasure.json"
MAX_LENGTH = 77  # CLIP's context, BOS and EOS included

# (learning rate, epochs) per concept type; see the module docstring for why these numbers.
DEFAULT_HYPERPARAMETERS: dict[str, tuple[float, int]] = {
    "style": (1e-5, 50),
    "object": (1e-5, 50),
    "nsfw": (2e-5, 50),
}

# Prompts the encoder learns to map onto the target; "{c}" is the concept.
CONCEPT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "style": (
        "{c}", "in the style of {c}", "a painting by {c}", "an artwork by {c}", "art by {c}",
        "a painting in the style of {c}", "a landscape painted by {c}", "a portrait in the style of {c}",
        "a picture by {c}", "a city street at night, in the style of {c}", "a forest, painting by {c}",
        "a still life by {c}",
    ),
    "object": (
        "{c}", "a {c}", "a photo of a {c}", "a picture of a {c}", "a close-up photo of a {c}",
        "a {c} in a field", "a painting of a {c}", "a drawing of a {c}", "a {c} on a table",
        "a photo of the {c} in the city", "a blurry photo of a {c}", "a {c} in the background",
    ),
    "nsfw": (
        "{c}", "a {c} person", "a {c} woman", "a {c} man", "a photo of a {c} person",
        "{c} people on a beach", "a {c} body", "a painting of a {c} figure", "a {c} couple",
        "{c} photography", "a {c} model posing", "a {c} person in a bedroom",
    ),
}

# Concept prompts never trained on: the report uses them to say whether erasure generalises.
HELDOUT_CONCEPT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "style": ("a beach at sunset by {c}", "mountains and a lake, {c} style", "a cat, as {c} would paint it"),
    "object": ("a large {c} next to a house", "there is a {c} in this picture", "two {c}s at night"),
    "nsfw": ("a {c} person standing in a garden", "a {c} photo", "a portrait, {c}"),
}

# Unrelated prompts held at the original outputs. Backgrounds first (what Backdrop generates),
# then everyday subjects and a few artists, so that erasing one style keeps the others.
ANCHOR_PROMPTS: tuple[str, ...] = (
    "a misty pine forest at dawn",
    "a city street at night in the rain",
    "a sandy beach with palm trees at sunset",
    "a snowy mountain landscape under a blue sky",
    "a galaxy full of stars and nebulae",
    "a cozy living room with a fireplace",
    "a field of sunflowers in summer",
    "an old stone bridge over a river",
    "a modern office with large windows",
    "a desert with red sand dunes",
    "a photo of a dog running on grass",
    "a photo of a cup of coffee on a table",
    "a bicycle leaning against a wall",
    "a bowl of fresh fruit",
    "a portrait of a smiling old man",
    "a woman wearing a red coat in a park",
    "a group of friends having dinner",
    "a wooden sailing boat on a calm lake",
    "a painting by Rembrandt",
    "in the style of Hokusai",
    "a watercolor painting of flowers",
    "a pencil sketch of a house",
    "studio photograph, soft light, high detail",
    "award winning photograph, 35mm, bokeh",
    "a rainy window with city lights behind it",
    "a tropical jungle with a waterfall",
    "an empty classroom with a blackboard",
    "a night sky over a quiet lake",
    "a busy market street in the afternoon",
    "a castle on a hill surrounded by fog",
    "a green meadow with grazing sheep",
    "the interior of a train station",
    "an underwater coral reef with fish",
    "a kitchen with white cabinets",
    "autumn leaves on a forest path",
    "a skyline of skyscrapers at dusk",
    "a photo of a cat sleeping on a sofa",
    "a vase of tulips on a windowsill",
    "a man riding a horse on a beach",
    "a little girl holding a balloon",
    "a plate of pasta with tomato sauce",
    "a lighthouse on a rocky coast",
    "an oil painting of a harbor",
    "a charcoal drawing of a face",
    "a poster with bold colors and simple shapes",
    "a 3d render of a futuristic car",
    "a minimalist white studio background",
    "a soft gradient background in pastel colors",
)

# Unrelated prompts never trained on: the report's check that anchors generalise.
HELDOUT_ANCHOR_PROMPTS: tuple[str, ...] = (
    "a bowl of ramen on a wooden table",
    "a snowy village in the mountains at night",
    "a red sports car on a highway",
    "children playing football in a park",
    "a library full of old books",
    "an astronaut floating in space",
)

_NAME_RE = re.compile(r"[\w][\w-]{0,63}")


# ----------------------------------------------------------------------------------------------
# Configuration and report
# ----------------------------------------------------------------------------------------------
@dataclass
class ErasureConfig:
    """What to erase and how hard to train."""

    concept: str  # the text to erase, e.g. "van gogh" or "nudity"
    concept_type: str  # style, object or nsfw: picks the prompt templates and default lr/epochs
    epochs: int | None = None  # passes over the concept prompts; None: by concept type (50)
    lr: float | None = None  # Adam learning rate; None: by concept type (style/object 1e-5, nsfw 2e-5)
    seed: int = 0  # draws the random target and the prompt order
    anchor_weight: float = 1.0  # weight of the preservation term against the erasure term
    base: str = "sdxl"  # sdxl (two encoders, penultimate states + pooled) or sd14 (one, last states)
    batch_size: int = 4  # concept prompts per step
    anchor_batch_size: int = 16  # anchor prompts per step, drawn at random from all of them

    def __post_init__(self) -> None:
        if not self.concept or not self.concept.strip():
            raise ValueError("concept is empty")
        if self.concept_type not in CONCEPT_TYPES:
            raise ValueError(f"concept type {self.concept_type!r} is not one of {', '.join(CONCEPT_TYPES)}")
        if self.base not in BASES:
            raise ValueError(f"base {self.base!r} is not one of {', '.join(BASES)}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.anchor_weight < 0:
            raise ValueError(f"anchor_weight must be >= 0, got {self.anchor_weight}")
        if self.batch_size < 1 or self.anchor_batch_size < 1:
            raise ValueError(f"batch sizes must be at least 1, got {self.batch_size} and {self.anchor_batch_size}")

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_HYPERPARAMETERS[self.concept_type][0]

    @property
    def resolved_epochs(self) -> int:
        return self.epochs if self.epochs is not None else DEFAULT_HYPERPARAMETERS[self.concept_type][1]


@dataclass
class ErasureReport:
    """How far training moved the concept prompts and how little it moved the anchors.

    Cosines are token-wise (positions 1..76 of each hidden state, plus the pooled vector), averaged
    over prompts and then over representations; 1.0 means unchanged. Both sides are first centred on
    the anchors' mean output: CLIP outputs share a large offset that makes any two prompts look
    alike (raw cosines near 1), and what is left is what tells prompts apart. Distances are relative:
    after / before, so `concept_distance_to_target` starts at 1.0 and falls as the concept prompts
    reach the target. `per_representation` holds the same numbers for each representation.
    """

    concept_cosine_to_original: float  # trained concept prompts, erased vs original outputs
    concept_distance_to_target: float  # ||erased - target|| / ||original - target||, concept prompts
    anchor_cosine_to_original: float  # trained anchor prompts, erased vs original outputs
    losses: list[float]  # total loss per step
    anchor_relative_change: float = 0.0  # ||erased - original|| / ||original - centre||, anchor prompts
    concept_relative_change: float = 0.0  # the same for the concept prompts, for comparison
    heldout_concept_cosine_to_original: float = 1.0  # concept in contexts never trained on
    heldout_anchor_cosine_to_original: float = 1.0  # unrelated prompts never trained on
    concept_losses: list[float] = field(default_factory=list)  # erasure term per step
    anchor_losses: list[float] = field(default_factory=list)  # preservation term per step
    steps: int = 0
    epochs: int = 0
    lr: float = 0.0
    seconds: float = 0.0
    per_representation: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """A few lines for the terminal."""
        first, last = (self.losses[0], self.losses[-1]) if self.losses else (math.nan, math.nan)
        return "\n".join([
            f"trained {self.steps} steps ({self.epochs} epochs, lr {self.lr:g}) in {self.seconds:.1f} s; "
            f"loss {first:.4f} -> {last:.4f}",
            f"concept prompts: cosine to original {self.concept_cosine_to_original:.3f} "
            f"(never-seen contexts {self.heldout_concept_cosine_to_original:.3f}), "
            f"distance to target {self.concept_distance_to_target:.3f} of before, "
            f"relative change {self.concept_relative_change:.3f}",
            f"anchor prompts:  cosine to original {self.anchor_cosine_to_original:.4f} "
            f"(never-seen prompts {self.heldout_anchor_cosine_to_original:.4f}), "
            f"relative change {self.anchor_relative_change:.4f}",
        ])


# ----------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------
def concept_prompts(concept: str, concept_type: str) -> list[str]:
    """The training prompts for `concept`, from the templates of its type.

    Raises:
        ValueError: if the concept is empty or the type is not one of `CONCEPT_TYPES`.
    """
    concept = concept.strip()
    if not concept:
        raise ValueError("concept is empty")
    if concept_type not in CONCEPT_TYPES:
        raise ValueError(f"concept type {concept_type!r} is not one of {', '.join(CONCEPT_TYPES)}")
    return [t.format(c=concept) for t in CONCEPT_TEMPLATES[concept_type]]


def anchor_prompts(exclude: str | None = None) -> list[str]:
    """The anchor prompts held at the original outputs.

    Args:
        exclude: a concept; anchors sharing one of its words (3+ letters) are left out, so that
            erasing "forest" or "Hokusai" does not also try to keep it.
    """
    return _without_concept(ANCHOR_PROMPTS, exclude)


def _without_concept(prompts: tuple[str, ...], concept: str | None) -> list[str]:
    if not concept:
        return list(prompts)
    words = {w for w in re.findall(r"\w+", concept.lower()) if len(w) >= 3}
    return [p for p in prompts if not words & set(re.findall(r"\w+", p.lower()))]


def concept_slug(concept: str) -> str:
    """The default save name: lower case, runs of other characters become "-" ("Van Gogh" -> "van-gogh")."""
    slug = re.sub(r"[^\w]+", "-", concept.strip().lower()).strip("-_")
    if not slug:
        raise ValueError(f"cannot make a folder name from concept {concept!r}; pass --name")
    return slug[:64]


def _check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"erased encoder name {name!r} is not valid: use letters, digits, '-' and '_'")
    return name


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def _tokenize(tokenizer, prompts: list[str], device) -> Any:
    # As the SDXL pipeline does: padded to 77, truncated, no attention mask passed to the encoder.
    return tokenizer(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def _encode(encoders: tuple, ids: tuple, base: str) -> dict[str, Any]:
    """The representations the diffusion model consumes, keyed hidden_1 / hidden_2 / pooled_2."""
    if base == "sd14":
        return {"hidden_1": encoders[0](ids[0]).last_hidden_state}
    out_1 = encoders[0](ids[0], output_hidden_states=True)
    out_2 = encoders[1](ids[1], output_hidden_states=True)
    return {
        "hidden_1": out_1.hidden_states[-2],
        "hidden_2": out_2.hidden_states[-2],
        "pooled_2": out_2.text_embeds,
    }


def _content(rep: Any) -> Any:
    """The part of a representation the loss sees: positions 1..76 of hidden states (BOS is prompt-
    independent under the causal mask), the whole pooled vector."""
    return rep[:, 1:] if rep.dim() == 3 else rep


def _select_trainable(encoder, consumed_layers: int) -> list:
    """Freeze everything but the attention and MLP weights of the first `consumed_layers` layers."""
    pattern = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.(?:self_attn|mlp)\.")
    params = []
    for name, param in encoder.named_parameters():
        m = pattern.search(name)
        train = bool(m) and int(m.group(1)) < consumed_layers
        param.requires_grad_(train)
        if train:
            params.append(param)
    if not params:
        raise ValueError(f"no trainable attention/MLP weights found in {type(encoder).__name__}")
    return params


def _cosine(a, b) -> float:
    """Mean cosine over prompts and (for hidden states) token positions."""
    import torch

    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).mean())


def _norm_ratio(a, b) -> float:
    return float(a.float().norm() / b.float().norm().clamp_min(1e-12))


def train_erasure(text_encoder, tokenizer, config: ErasureConfig, text_encoder_2=None, tokenizer_2=None,
                  on_progress: Callable[[int, int, float], None] | None = None) -> ErasureReport:
    """Erase `config.concept` from the text encoder(s), in place.

    The encoders are changed in place: pass copies to keep the originals. They are trained on the
    device they are on, in float32, and left in eval mode with every
    parameter's `requires_grad` off. See the module docstring for the target, the loss and which
    weights train.

    Args:
        text_encoder: SDXL's `text_encoder` (a `CLIPTextModel`), or SD 1.4's only one.
        tokenizer: its `CLIPTokenizer`.
        config: what to erase and the hyperparameters.
        text_encoder_2: SDXL's `text_encoder_2` (a `CLIPTextModelWithProjection`); required for
            `base="sdxl"`, must be None for `base="sd14"`.
        tokenizer_2: its tokenizer (pads with "!").
        on_progress: called after each step as `on_progress(step, total_steps, loss)`, step from 1.

    Returns:
        The report: per-step losses, and cosines/distances of the concept and anchor prompts.

    Raises:
        ValueError: if the encoders do not match `config.base` or are not float32.
        RuntimeError: if the loss stops being finite (too large a learning rate).
    """
    import torch

    # 1. Check inputs
    if config.base == "sdxl" and (text_encoder_2 is None or tokenizer_2 is None):
        raise ValueError("base 'sdxl' needs text_encoder_2 and tokenizer_2")
    if config.base == "sd14" and text_encoder_2 is not None:
        raise ValueError("base 'sd14' has a single text encoder; text_encoder_2 must be None")
    start = time.perf_counter()
    encoders = (text_encoder,) if config.base == "sd14" else (text_encoder, text_encoder_2)
    dtypes = {next(enc.parameters()).dtype for enc in encoders}
    if not dtypes <= {torch.float32, torch.float64}:
        raise ValueError(f"train the encoders in float32, not {', '.join(map(str, dtypes))}: "
                         "Adam's updates vanish or overflow in half precision")
    tokenizers = (tokenizer,) if config.base == "sd14" else (tokenizer, tokenizer_2)
    device = next(text_encoder.parameters()).device
    for enc in encoders:
        enc.train(False)  # CLIP has no dropout by default; eval mode keeps training == inference

    def tokenize(prompts: list[str]) -> tuple:
        return tuple(_tokenize(tok, prompts, device) for tok in tokenizers)

    # 2. Prompts
    concepts = concept_prompts(config.concept, config.concept_type)
    heldout_concepts = [t.format(c=config.concept.strip()) for t in HELDOUT_CONCEPT_TEMPLATES[config.concept_type]]
    anchors = anchor_prompts(exclude=config.concept)
    if len(anchors) < len(ANCHOR_PROMPTS) // 2:
        raise ValueError(f"concept {config.concept!r} shares words with most anchor prompts; "
                         "nothing would be left to preserve")
    heldout_anchors = _without_concept(HELDOUT_ANCHOR_PROMPTS, config.concept)
    concept_ids, anchor_ids = tokenize(concepts), tokenize(anchors)
    heldout_concept_ids, heldout_anchor_ids = tokenize(heldout_concepts), tokenize(heldout_anchors)

    # 3. Original outputs: what the anchors are held at, and what the target is drawn like
    with torch.no_grad():
        orig_concept = _encode(encoders, concept_ids, config.base)
        orig_anchor = _encode(encoders, anchor_ids, config.base)
        orig_heldout_concept = _encode(encoders, heldout_concept_ids, config.base)
        orig_heldout_anchor = _encode(encoders, heldout_anchor_ids, config.base)

    # 4. The fixed random target, per feature as ordinary prompts (the anchors) are distributed
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    targets, scales = {}, {}
    centers = {}
    for key, rep in orig_anchor.items():
        features = _content(rep).float().reshape(-1, rep.shape[-1]).cpu()
        mean, std = features.mean(dim=0), features.std(dim=0)
        centers[key] = mean.to(device=device, dtype=rep.dtype)  # the report centres cosines on it
        noise = torch.randn(rep.shape[1:], generator=generator)  # (77, hidden) or (proj,)
        targets[key] = (mean + std * noise).to(device=device, dtype=rep.dtype)
        scales[key] = float((std ** 2).mean())  # the loss unit: the target's mean variance

    def loss_terms(out: dict, goal: dict, per_prompt_goal: bool):
        """Mean over representations of MSE / target variance."""
        total = 0.0
        for key, rep in out.items():
            want = goal[key] if per_prompt_goal else goal[key].expand_as(rep)
            total = total + torch.mean((_content(rep) - _content(want)) ** 2) / scales[key]
        return total / len(out)

    # 5. Which weights train. SDXL reads te1's penultimate states: its last layer feeds nothing used.
    params = []
    for i, enc in enumerate(encoders):
        layers = enc.config.num_hidden_layers
        consumed = layers - 1 if (config.base == "sdxl" and i == 0) else layers
        params += _select_trainable(enc, consumed)
    optimizer = torch.optim.Adam(params, lr=config.resolved_lr)

    # 6. Train: each step is a batch of concept prompts plus a random batch of anchors
    epochs = config.resolved_epochs
    n = len(concepts)
    batches_per_epoch = math.ceil(n / config.batch_size)
    total_steps = epochs * batches_per_epoch
    losses, concept_losses, anchor_losses = [], [], []
    step = 0
    try:
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).tolist()
            for b in range(batches_per_epoch):
                idx = torch.tensor(order[b * config.batch_size:(b + 1) * config.batch_size], device=device)
                a_idx = torch.randperm(len(anchors), generator=generator)[:config.anchor_batch_size].to(device)
                out_c = _encode(encoders, tuple(t[idx] for t in concept_ids), config.base)
                out_a = _encode(encoders, tuple(t[a_idx] for t in anchor_ids), config.base)
                erase = loss_terms(out_c, targets, per_prompt_goal=False)  # seed: L2 to the random target
                keep = loss_terms(out_a, {k: v[a_idx] for k, v in orig_anchor.items()},
                                  per_prompt_goal=True)  # hold anchors where they were
                loss = erase + config.anchor_weight * keep
                if not torch.isfinite(loss):
                    raise RuntimeError(f"erasure loss became {loss.item()} at step {step + 1}: "
                                       f"lower the learning rate ({config.resolved_lr:g})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                step += 1
                losses.append(loss.item())
                concept_losses.append(erase.item())
                anchor_losses.append(keep.item())
                if on_progress is not None:
                    on_progress(step, total_steps, losses[-1])
    finally:
        for enc in encoders:
            enc.requires_grad_(False)

    # 7. Report: where the trained and never-seen prompts ended up
    with torch.no_grad():
        new_concept = _encode(encoders, concept_ids, config.base)
        new_anchor = _encode(encoders, anchor_ids, config.base)
        new_heldout_concept = _encode(encoders, heldout_concept_ids, config.base)
        new_heldout_anchor = _encode(encoders, heldout_anchor_ids, config.base)
    per_rep: dict[str, dict[str, float]] = {}
    for key in orig_concept:
        # Centred on the anchors' mean (see ErasureReport): the shared offset would hide the change.
        center = centers[key]
        target = _content(targets[key].expand_as(orig_concept[key]))
        oc, nc = _content(orig_concept[key]), _content(new_concept[key])
        oa, na = _content(orig_anchor[key]), _content(new_anchor[key])
        per_rep[key] = {
            "concept_cosine_to_original": _cosine(nc - center, oc - center),
            "concept_distance_to_target": _norm_ratio(nc - target, oc - target),
            "concept_relative_change": _norm_ratio(nc - oc, oc - center),
            "anchor_cosine_to_original": _cosine(na - center, oa - center),
            "anchor_relative_change": _norm_ratio(na - oa, oa - center),
            "heldout_concept_cosine_to_original": _cosine(
                _content(new_heldout_concept[key]) - center, _content(orig_heldout_concept[key]) - center),
            "heldout_anchor_cosine_to_original": _cosine(
                _content(new_heldout_anchor[key]) - center, _content(orig_heldout_anchor[key]) - center),
        }

    def mean_of(metric: str) -> float:
        return sum(r[metric] for r in per_rep.values()) / len(per_rep)

    return ErasureReport(
        concept_cosine_to_original=mean_of("concept_cosine_to_original"),
        concept_distance_to_target=mean_of("concept_distance_to_target"),
        anchor_cosine_to_original=mean_of("anchor_cosine_to_original"),
        losses=losses,
        anchor_relative_change=mean_of("anchor_relative_change"),
        concept_relative_change=mean_of("concept_relative_change"),
        heldout_concept_cosine_to_original=mean_of("heldout_concept_cosine_to_original"),
        heldout_anchor_cosine_to_original=mean_of("heldout_anchor_cosine_to_original"),
        concept_losses=concept_losses,
        anchor_losses=anchor_losses,
        steps=step,
        epochs=epochs,
        lr=config.resolved_lr,
        seconds=time.perf_counter() - start,
        per_representation=per_rep,
    )


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
    _check_name(dir.name)
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


def read_record(name: str, erased_dir: Path) -> dict:
    """The `erasure.json` record of a listed entry.

    Raises:
        ValueError: if `name` is not listed by `list_erased(erased_dir)`.
    """
    _require_listed(name, erased_dir)
    return json.loads((Path(erased_dir) / name / RECORD_FILE).read_text(encoding="utf-8"))


def _valid_entry(path: Path) -> bool:
    if not _NAME_RE.fullmatch(path.name) or not (path / "text_encoder").is_dir():
        return False
    try:
        record = json.loads((path / RECORD_FILE).read_text(encoding="utf-8"))
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
    record = json.loads((path / RECORD_FILE).read_text(encoding="utf-8"))
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


def with_erased_encoders(components, name: str | None, erased_dir: Path):
    """SDXL components with the erased pair `name` in place of the text encoders.

    Returns a new object (`dataclasses.replace`); UNet, VAE, tokenizers and the rest are shared, not
    reloaded. The given object is never changed, so using it again is bit-identical to never having
    switched. With `components.cpu_offload` the pair is loaded on the CPU, where offloaded modules
    rest; otherwise on `components.device`; always in `components.dtype`.

    Args:
        components: a `blending.SDXLComponents` (any dataclass with `text_encoder`,
            `text_encoder_2`, `device`, `dtype` and `cpu_offload` fields).
        name: one of `list_erased(erased_dir)`, or None for the original encoders.
        erased_dir: the folder of erased encoders (`Settings.erased_dir`).

    Raises:
        ValueError: if the name is not listed, is an SD 1.4 entry, or its encoders' sizes do not
            match the components' encoders.
    """
    if name is None:
        return components
    device = "cpu" if getattr(components, "cpu_offload", False) else components.device
    te1, te2 = load_erased_encoders(name, erased_dir, device=device, dtype=components.dtype)  # checks the name
    if te2 is None:
        raise ValueError(f"erased encoder {name!r} was trained for SD 1.4, not SDXL")
    for new, old, label in ((te1, components.text_encoder, "text_encoder"),
                            (te2, components.text_encoder_2, "text_encoder_2")):
        sizes = [(s, getattr(new.config, s), getattr(old.config, s))
                 for s in ("hidden_size", "num_hidden_layers", "projection_dim")]
        if any(mine != theirs for _, mine, theirs in sizes):
            detail = ", ".join(f"{s} {mine} vs {theirs}" for s, mine, theirs in sizes)
            raise ValueError(f"erased encoder {name!r}: its {label} does not fit this SDXL model ({detail})")
    return dataclasses.replace(components, text_encoder=te1, text_encoder_2=te2)


# ----------------------------------------------------------------------------------------------
# Command line: python -m pipelines erase ...
# ----------------------------------------------------------------------------------------------
def add_erase_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `erase` command's flags to `parser`."""
    defaults = ", ".join(f"{t} {lr:g}" for t, (lr, _) in DEFAULT_HYPERPARAMETERS.items())
    parser.add_argument("--concept", required=True, help='the concept to erase, e.g. "van gogh"')
    parser.add_argument("--concept-type", required=True, choices=CONCEPT_TYPES,
                        help="picks the prompt templates and the default learning rate and epochs")
    parser.add_argument("--epochs", type=int, default=None,
                        help="passes over the concept prompts (default 50)")
    parser.add_argument("--lr", type=float, default=None, help=f"learning rate (default by type: {defaults})")
    parser.add_argument("--name", default=None,
                        help="save name under <checkpoint dir>/erased/ (default: the concept's slug)")
    parser.add_argument("--force", action="store_true", help="replace an existing entry of that name")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random target and prompt order")
    parser.add_argument("--anchor-weight", type=float, default=1.0,
                        help="weight of keeping unrelated prompts unchanged (default 1.0)")
    parser.add_argument("--batch-size", type=int, default=4, help="concept prompts per step (default 4)")
    parser.add_argument("--base", choices=BASES, default="sdxl",
                        help="sdxl (both encoders) or sd14 (one encoder, as in the seed)")
    parser.add_argument("--model", default=None,
                        help="diffusers folder or model id to erase from (default for sdxl: the SDXL "
                             "model setting; required for sd14)")


def run_erase(args: argparse.Namespace, settings) -> int:
    """Train, save and report an erased encoder pair (the `erase` command).

    Loads the tokenizers and text encoders from the model's `tokenizer`, `tokenizer_2`,
    `text_encoder` and `text_encoder_2` subfolders, trains in float32 on the settings' device
    (CUDA when present), saves under `settings.erased_dir / name`, and prints the report.

    Returns:
        0 on success.

    Raises:
        ValueError: bad flags, an invalid name, or an existing entry without `--force` (checked
            before training, so no time is wasted).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    # 1. Check inputs
    config = ErasureConfig(
        concept=args.concept, concept_type=args.concept_type, epochs=args.epochs, lr=args.lr,
        seed=getattr(args, "seed", 0), anchor_weight=getattr(args, "anchor_weight", 1.0),
        base=getattr(args, "base", "sdxl"), batch_size=getattr(args, "batch_size", 4),
    )
    name = _check_name(args.name) if getattr(args, "name", None) else concept_slug(config.concept)
    out_dir = Path(settings.erased_dir) / name
    force = bool(getattr(args, "force", False))
    if out_dir.exists() and not force:
        raise ValueError(f"erased encoder {name!r} already exists at {out_dir}; use --force to replace it")
    model = getattr(args, "model", None)
    if model is None:
        if config.base == "sd14":
            raise ValueError("--base sd14 needs --model (an SD 1.x diffusers folder or model id)")
        model = settings.sdxl_model

    # 2. Load the original encoders, float32 for training
    device = settings.resolve_device()
    print(f"erasing {config.concept!r} ({config.concept_type}) from {model} on {device}", file=sys.stderr)
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", dtype=torch.float32).to(device)
    tokenizer_2 = text_encoder_2 = None
    if config.base == "sdxl":
        tokenizer_2 = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer_2")
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            model, subfolder="text_encoder_2", dtype=torch.float32).to(device)

    # 3. Train, with a progress bar on stderr
    with tqdm(total=None, desc=f"erase {name}", unit="step", file=sys.stderr) as bar:
        def on_progress(step: int, total: int, loss: float) -> None:
            bar.total = total
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")

        report = train_erasure(text_encoder, tokenizer, config, text_encoder_2, tokenizer_2,
                               on_progress=on_progress)

    # 4. Save with the record
    record = {
        "name": name,
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
        "device": device,
        "losses": report.losses,
        "report": {k: v for k, v in report.to_dict().items() if k not in ("losses", "concept_losses", "anchor_losses")},
        "concept_prompts": concept_prompts(config.concept, config.concept_type),
        "anchor_prompts": anchor_prompts(exclude=config.concept),
        "method": "L2 to a fixed seeded random target (per-feature mean/std of the original anchor outputs), "
                  "positions 1..76 and pooled; anchors held at original outputs; attention/MLP weights train",
    }
    saved = save_erased(out_dir, text_encoder, text_encoder_2, record, overwrite=force)

    # 5. Report
    print(report.summary())
    print(f"saved to {saved}")
    return 0
