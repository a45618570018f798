"""Training concept-erased text encoders: the prompts, the loss, the loop, and the report.

Making, storing and swapping entries live in `pipelines/erasure.py` (its `erase_concept` calls
`train_erasure`; the `erase` command in `pipelines/entry/cli.py` calls it); the prompt lists are
plain text files under `prompts/erasure/` (see prompts/README.md).

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
  statistics of the concept prompts would leak the concept through their mean.
- **Positions.** CLIP's text encoder is causal: the hidden state at a position depends only on the
  tokens up to it. So the erase loss covers each concept prompt from the concept's first token on
  (found per prompt and per tokenizer, `concept_token_start`) to position 76, padding included
  (SDXL's cross-attention reads all 77 positions, and every position after the concept carries it).
  The positions before it ("a painting by", "in the style of") cannot know the concept; pulling them
  to the target would only fight the anchors that start the same way and make every prompt drift.
  The anchors are held at positions 1..76; position 0 (BOS) sees only itself and is left out.
- **Loss.** Mean squared error per representation divided by that representation's mean target
  variance (`mean(std**2)`), so each representation counts alike whatever its scale; the concept
  term and the anchor term use the same units and `anchor_weight` balances them. At the start the
  concept term is a little under 2 (the target's variance, 1, plus the concept positions' own
  spread, mostly padding) and the anchor term 0.
- **What trains.** Only the self-attention and MLP weights (and biases) of the transformer layers
  that feed a consumed representation. Embeddings, layer norms and the projection are frozen, so
  the token table stays intact and anchors have less reason to drift (and `pipelines.diffusion.erasure` can
  tell from them which base model a pair came from). For SDXL's first encoder the last layer is
  frozen too: SDXL reads its penultimate states, so that layer feeds nothing it uses.
  These weights are shared by every position of every prompt, so unrelated prompts still move a
  little: the report's "drift" numbers say how much.
- **Schedule.** One epoch is one pass over the concept prompts, shuffled, in batches of
  `batch_size`; every step also runs `anchor_batch_size` anchors drawn at random from the 48
  (more of them overall held unseen prompts better in our tiny-model runs). Adam, gradient norm
  clipped at 1. Defaults per concept type (`DEFAULT_HYPERPARAMETERS`) are ours: the seed sets the
  learning rate by type but gives only `--epoch 50`. Style and object 1e-5 (one name, a narrow
  region), nsfw 2e-5 (a diffuse concept needs a larger push), 50 epochs each; not tuned on real
  SDXL weights: raise `--lr` or `--epochs` if the printed report says the concept moved too little.
- **Precision.** Training runs in float32 (Adam in float16 is unstable); the encoders are saved in
  float32 and cast to the pipeline's dtype when loaded. Real SDXL encoders need about 16 GB of GPU
  memory to train this way.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.prompting.templates import PROMPTS_DIR
from pipelines.prompting.tokens import MAX_TOKENS as MAX_LENGTH  # CLIP's context, BOS and EOS included

BASES = ("sdxl", "sd14")  # the models an erased pair can come from (both encoders of SDXL, SD 1.4's one)
CONCEPT_TYPES = ("style", "object", "nsfw")
PROMPT_LISTS_DIR = PROMPTS_DIR / "erasure"

# (learning rate, epochs) per concept type; see the module docstring for why these numbers.
DEFAULT_HYPERPARAMETERS: dict[str, tuple[float, int]] = {
    "style": (1e-5, 50),
    "object": (1e-5, 50),
    "nsfw": (2e-5, 50),
}


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
    """How far training moved the concept prompts and how little it moved everything else.

    Cosines are token-wise (hidden-state positions, plus the pooled vector), averaged over prompts
    and then over representations; 1.0 means unchanged. Both sides are first centred on the anchors'
    mean output: CLIP outputs share a large offset that makes any two prompts look alike (raw
    cosines near 1), and what is left is what tells prompts apart. Concept numbers cover the
    positions the erase loss covers (from the concept's first token on); anchor numbers positions
    1..76. Distances and drifts are relative: `concept_distance_to_target` is
    ||erased - target|| / ||original - target|| and starts at 1.0; a drift or relative change is
    ||erased - original|| / ||original - centre||. `per_representation` holds the same numbers for
    each representation.
    """

    concept_cosine_to_original: float  # trained concept prompts, erased vs original outputs
    concept_distance_to_target: float  # ||erased - target|| / ||original - target||, concept prompts
    anchor_cosine_to_original: float  # trained anchor prompts, erased vs original outputs
    losses: list[float]  # total loss per step
    anchor_relative_change: float = 0.0  # ||erased - original|| / ||original - centre||, anchor prompts
    concept_relative_change: float = 0.0  # the same for the concept prompts, for comparison
    heldout_concept_cosine_to_original: float = 1.0  # concept in contexts never trained on
    heldout_anchor_cosine_to_original: float = 1.0  # unrelated prompts never trained on
    unrelated_drift: float = 0.0  # relative change of the unrelated prompts never trained on
    prefix_drift: float = 0.0  # relative change of concept prompts before the concept's first token
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
            f"drift of unrelated prompts never trained on {self.unrelated_drift:.4f}; "
            f"of concept prompts before the concept {self.prefix_drift:.4f} (0 = unchanged)",
        ])


# ----------------------------------------------------------------------------------------------
# Prompts (plain text files under prompts/erasure/)
# ----------------------------------------------------------------------------------------------
def read_prompt_list(name: str) -> list[str]:
    """The prompts in `prompts/erasure/<name>.txt`: one per line; blank lines and `#` lines skipped.

    Read on every call, so an edited list applies to the next training without a restart.

    Raises:
        ValueError: if the file is missing or holds no prompt.
    """
    path = PROMPT_LISTS_DIR / f"{name}.txt"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ValueError(f"prompt list {path} cannot be read") from err
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"prompt list {path} holds no prompt")
    return prompts


def _fill(list_name: str, concept: str) -> list[str]:
    templates = read_prompt_list(list_name)
    for template in templates:
        if template.count("{concept}") != 1:
            raise ValueError(f"prompts/erasure/{list_name}.txt: {template!r} must hold {{concept}} exactly once")
    return [t.replace("{concept}", concept) for t in templates]


def concept_prompts(concept: str, concept_type: str, heldout: bool = False) -> list[str]:
    """The training prompts for `concept` (or, with `heldout`, the ones never trained on that the
    report uses), from `prompts/erasure/<type>[_heldout].txt`.

    Raises:
        ValueError: if the concept is empty or the type is not one of `CONCEPT_TYPES`.
    """
    concept = concept.strip()
    if not concept:
        raise ValueError("concept is empty")
    if concept_type not in CONCEPT_TYPES:
        raise ValueError(f"concept type {concept_type!r} is not one of {', '.join(CONCEPT_TYPES)}")
    return _fill(f"{concept_type}_heldout" if heldout else concept_type, concept)


def anchor_prompts(exclude: str | None = None, heldout: bool = False) -> list[str]:
    """The anchor prompts held at the original outputs (`prompts/erasure/anchors.txt`), or with
    `heldout` the unrelated prompts never trained on (`anchors_heldout.txt`).

    Args:
        exclude: a concept; anchors sharing one of its words (3+ letters) are left out, so that
            erasing "forest" or "Hokusai" does not also try to keep it.
    """
    prompts = read_prompt_list("anchors_heldout" if heldout else "anchors")
    return _sharing_no_word(prompts, exclude) if exclude else prompts


def _sharing_no_word(prompts: list[str], concept: str) -> list[str]:
    """The prompts sharing none of the concept's words (3+ letters)."""
    words = {w for w in re.findall(r"\w+", concept.lower()) if len(w) >= 3}
    return [p for p in prompts if not words & set(re.findall(r"\w+", p.lower()))]


def concept_token_start(tokenizer, prompt: str, concept: str) -> int:
    """The position of the concept's first token in the tokenized `prompt` (BOS is position 0).

    Found as the length of the common start of the prompt's tokens and those of the text before
    the concept, so a concept glued to a word before it ("x{concept}") starts at that word's token.

    Raises:
        ValueError: if the concept does not occur in the prompt (case-insensitive).
    """
    at = prompt.lower().find(concept.strip().lower())
    if at < 0:
        raise ValueError(f"concept {concept!r} does not occur in the prompt {prompt!r}")
    ids = tokenizer(prompt).input_ids
    before = tokenizer(prompt[:at]).input_ids[:-1]  # without EOS
    start = 0
    while start < min(len(ids), len(before)) and ids[start] == before[start]:
        start += 1
    return min(start, MAX_LENGTH)


# ----------------------------------------------------------------------------------------------
# The steps of `train_erasure`
# ----------------------------------------------------------------------------------------------
def _check_encoders(config: ErasureConfig, text_encoder, tokenizer, text_encoder_2, tokenizer_2) -> tuple:
    import torch

    if config.base == "sdxl" and (text_encoder_2 is None or tokenizer_2 is None):
        raise ValueError("base 'sdxl' needs text_encoder_2 and tokenizer_2")
    if config.base == "sd14" and text_encoder_2 is not None:
        raise ValueError("base 'sd14' has a single text encoder; text_encoder_2 must be None")
    encoders = (text_encoder,) if config.base == "sd14" else (text_encoder, text_encoder_2)
    dtypes = {next(enc.parameters()).dtype for enc in encoders}
    if not dtypes <= {torch.float32, torch.float64}:
        raise ValueError(f"train the encoders in float32, not {', '.join(map(str, dtypes))}: "
                         "Adam's updates vanish or overflow in half precision")
    tokenizers = (tokenizer,) if config.base == "sd14" else (tokenizer, tokenizer_2)
    return encoders, tokenizers


def _tokenize(tokenizers: tuple, prompts: list[str], device) -> tuple:
    # As the SDXL pipeline does: padded to 77, truncated, no attention mask passed to the encoder.
    return tuple(tok(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                     return_tensors="pt").input_ids.to(device) for tok in tokenizers)


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


def _position_masks(tokenizers: tuple, prompts: list[str], first: Callable[[Any, str], int], device) -> dict:
    """Per hidden representation, a (B, 77) bool mask that is True from `first(tokenizer, prompt)` on."""
    import torch

    positions = torch.arange(MAX_LENGTH, device=device)
    masks = {}
    for i, tok in enumerate(tokenizers):
        starts = torch.tensor([first(tok, p) for p in prompts], device=device)
        masks[f"hidden_{i + 1}"] = positions[None, :] >= starts[:, None]
    return masks


def _draw_target(anchor_outputs: dict, anchor_masks: dict, generator) -> tuple[dict, dict, dict]:
    """The fixed random target, per feature as ordinary prompts (the anchors) are distributed.

    Returns:
        (targets, centres, scales): per representation the target ((77, hidden) or (proj,)), the
        anchors' mean output (the report centres cosines on it) and the loss unit (mean variance).
    """
    import torch

    targets, centres, scales = {}, {}, {}
    for key, rep in anchor_outputs.items():
        features = rep[anchor_masks[key]] if key in anchor_masks else rep  # (N, hidden)
        features = features.float().cpu()
        mean, std = features.mean(dim=0), features.std(dim=0)
        centres[key] = mean.to(device=rep.device, dtype=rep.dtype)
        noise = torch.randn(rep.shape[1:], generator=generator)
        targets[key] = (mean + std * noise).to(device=rep.device, dtype=rep.dtype)
        scales[key] = float((std ** 2).mean())
    return targets, centres, scales


def _loss(outputs: dict, goals: dict, masks: dict, scales: dict):
    """Mean over representations of the masked mean squared error divided by the target variance.

    Hidden states count only where `masks[key]` (B, 77) is True; pooled vectors count whole.
    """
    total = 0.0
    for key, rep in outputs.items():
        squared = (rep - goals[key].expand_as(rep)) ** 2
        if key in masks:
            weight = masks[key].unsqueeze(-1).to(squared.dtype)  # (B, 77, 1)
            mse = (squared * weight).sum() / (weight.sum() * rep.shape[-1]).clamp_min(1)
        else:
            mse = squared.mean()
        total = total + mse / scales[key]
    return total / len(outputs)


def _select_trainable(encoders: tuple, base: str) -> list:
    """Freeze everything but the attention and MLP weights of the layers that feed a consumed
    representation (SDXL reads the first encoder's penultimate states: its last layer feeds nothing)."""
    pattern = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.(?:self_attn|mlp)\.")
    params = []
    for i, encoder in enumerate(encoders):
        consumed = encoder.config.num_hidden_layers - (1 if base == "sdxl" and i == 0 else 0)
        found = []
        for name, param in encoder.named_parameters():
            m = pattern.search(name)
            train = bool(m) and int(m.group(1)) < consumed
            param.requires_grad_(train)
            if train:
                found.append(param)
        if not found:
            raise ValueError(f"no trainable attention/MLP weights found in {type(encoder).__name__}")
        params += found
    return params


def _cosine(a, b) -> float:
    """Mean cosine over prompts and (for hidden states) token positions."""
    import torch

    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).mean())


def _norm_ratio(a, b) -> float:
    return float(a.float().norm() / b.float().norm().clamp_min(1e-12))


def _measure(before: dict, after: dict, masks: dict, targets: dict, centres: dict) -> dict[str, dict[str, float]]:
    """The report's numbers per representation, from outputs before and after training.

    `before`/`after`/`masks` are keyed by prompt set (concepts, anchors, heldout_concepts,
    heldout_anchors, prefixes), then by representation.
    """
    per_rep: dict[str, dict[str, float]] = {}
    for key, centre in centres.items():
        def pick(outputs: dict, prompt_set: str):
            rep = outputs[prompt_set][key]
            # Hidden states: the masked positions, flattened to (N, hidden); pooled: as is.
            return rep[masks[prompt_set][key]] if key in masks[prompt_set] else rep

        def cosine(prompt_set: str) -> float:
            return _cosine(pick(after, prompt_set) - centre, pick(before, prompt_set) - centre)

        def change(prompt_set: str) -> float:
            old = pick(before, prompt_set)
            return _norm_ratio(pick(after, prompt_set) - old, old - centre)

        target = targets[key].expand_as(before["concepts"][key])
        target = target[masks["concepts"][key]] if key in masks["concepts"] else target
        per_rep[key] = {
            "concept_cosine_to_original": cosine("concepts"),
            "concept_distance_to_target": _norm_ratio(pick(after, "concepts") - target,
                                                      pick(before, "concepts") - target),
            "concept_relative_change": change("concepts"),
            "anchor_cosine_to_original": cosine("anchors"),
            "anchor_relative_change": change("anchors"),
            "heldout_concept_cosine_to_original": cosine("heldout_concepts"),
            "heldout_anchor_cosine_to_original": cosine("heldout_anchors"),
            "unrelated_drift": change("heldout_anchors"),
        }
        if key in masks["prefixes"]:  # pooled vectors come after the concept: no prefix to measure
            per_rep[key]["prefix_drift"] = change("prefixes")
    return per_rep


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def train_erasure(text_encoder, tokenizer, config: ErasureConfig, text_encoder_2=None, tokenizer_2=None,
                  on_progress: Callable[[int, int, float], None] | None = None) -> ErasureReport:
    """Erase `config.concept` from the text encoder(s), in place.

    The encoders are changed in place: pass copies to keep the originals. They are trained on the
    device they are on, in float32, and left in eval mode with every parameter's `requires_grad`
    off. See the module docstring for the target, the positions, the loss and which weights train.

    Args:
        text_encoder: SDXL's `text_encoder` (a `CLIPTextModel`), or SD 1.4's only one.
        tokenizer: its `CLIPTokenizer`.
        config: what to erase and the hyperparameters.
        text_encoder_2: SDXL's `text_encoder_2` (a `CLIPTextModelWithProjection`); required for
            `base="sdxl"`, must be None for `base="sd14"`.
        tokenizer_2: its tokenizer (pads with "!").
        on_progress: called after each step as `on_progress(step, total_steps, loss)`, step from 1.

    Returns:
        The report: per-step losses, and cosines/distances/drifts of the concept and other prompts.

    Raises:
        ValueError: if the encoders do not match `config.base` or are not float32.
        RuntimeError: if the loss stops being finite (too large a learning rate).
    """
    import torch

    # 1. Check inputs
    encoders, tokenizers = _check_encoders(config, text_encoder, tokenizer, text_encoder_2, tokenizer_2)
    start_time = time.perf_counter()
    device = next(text_encoder.parameters()).device
    for enc in encoders:
        enc.train(False)  # CLIP has no dropout by default; eval mode keeps training == inference

    # 2. Tokenize concept and anchor prompts (and the held-out ones the report measures)
    concept = config.concept.strip()
    anchors = anchor_prompts()
    prompts = {
        "concepts": concept_prompts(concept, config.concept_type),
        "anchors": _sharing_no_word(anchors, concept),
        "heldout_concepts": concept_prompts(concept, config.concept_type, heldout=True),
        "heldout_anchors": anchor_prompts(exclude=concept, heldout=True),
    }
    if len(prompts["anchors"]) < len(anchors) // 2:
        raise ValueError(f"concept {concept!r} shares words with most anchor prompts; nothing would be left to preserve")
    tokens = {name: _tokenize(tokenizers, texts, device) for name, texts in prompts.items()}

    # 3. Positions: the erase loss from the concept's first token on (CLIP is causal), the anchors
    # from position 1 on (BOS is the same for every prompt)
    def from_concept(tok, prompt: str) -> int:
        return concept_token_start(tok, prompt, concept)

    def after_bos(tok, prompt: str) -> int:
        return 1
    masks = {name: _position_masks(tokenizers, texts, from_concept if "concepts" in name else after_bos, device)
             for name, texts in prompts.items()}
    # The report's prefix drift: the concept prompts at positions 1 .. concept start - 1
    not_bos = torch.arange(MAX_LENGTH, device=device) >= 1
    masks["prefixes"] = {key: not_bos & ~m for key, m in masks["concepts"].items()}

    # 4. Original outputs: what the anchors are held at, and what the target is drawn like
    with torch.no_grad():
        original = {name: _encode(encoders, ids, config.base) for name, ids in tokens.items()}

    # 5. The fixed random target
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    targets, centres, scales = _draw_target(original["anchors"], masks["anchors"], generator)

    # 6. Which weights train
    params = _select_trainable(encoders, config.base)
    optimizer = torch.optim.Adam(params, lr=config.resolved_lr)

    # 7. Train: each step is a batch of concept prompts plus a random batch of anchors
    epochs, n = config.resolved_epochs, len(prompts["concepts"])
    batches_per_epoch = math.ceil(n / config.batch_size)
    total_steps = epochs * batches_per_epoch
    losses, concept_losses, anchor_losses = [], [], []
    try:
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).tolist()
            for b in range(batches_per_epoch):
                idx = torch.tensor(order[b * config.batch_size:(b + 1) * config.batch_size], device=device)
                a_idx = torch.randperm(len(prompts["anchors"]), generator=generator)[:config.anchor_batch_size]
                a_idx = a_idx.to(device)
                out_c = _encode(encoders, tuple(t[idx] for t in tokens["concepts"]), config.base)
                out_a = _encode(encoders, tuple(t[a_idx] for t in tokens["anchors"]), config.base)
                # seed: L2 to the random target; the anchors held where they were
                erase = _loss(out_c, targets, {k: m[idx] for k, m in masks["concepts"].items()}, scales)
                keep = _loss(out_a, {k: v[a_idx] for k, v in original["anchors"].items()},
                             {k: m[a_idx] for k, m in masks["anchors"].items()}, scales)
                loss = erase + config.anchor_weight * keep
                if not torch.isfinite(loss):
                    raise RuntimeError(f"erasure loss became {loss.item()} at step {len(losses) + 1}: "
                                       f"lower the learning rate ({config.resolved_lr:g})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                losses.append(loss.item())
                concept_losses.append(erase.item())
                anchor_losses.append(keep.item())
                if on_progress is not None:
                    on_progress(len(losses), total_steps, losses[-1])
    finally:
        for enc in encoders:
            enc.requires_grad_(False)

    # 8. Report: where the trained, never-seen and unrelated prompts ended up
    with torch.no_grad():
        erased = {name: _encode(encoders, ids, config.base) for name, ids in tokens.items()}
    original["prefixes"], erased["prefixes"] = original["concepts"], erased["concepts"]
    per_rep = _measure(original, erased, masks, targets, centres)

    def mean_of(metric: str) -> float:
        values = [r[metric] for r in per_rep.values() if metric in r]
        return sum(values) / len(values)

    return ErasureReport(
        concept_cosine_to_original=mean_of("concept_cosine_to_original"),
        concept_distance_to_target=mean_of("concept_distance_to_target"),
        anchor_cosine_to_original=mean_of("anchor_cosine_to_original"),
        losses=losses,
        anchor_relative_change=mean_of("anchor_relative_change"),
        concept_relative_change=mean_of("concept_relative_change"),
        heldout_concept_cosine_to_original=mean_of("heldout_concept_cosine_to_original"),
        heldout_anchor_cosine_to_original=mean_of("heldout_anchor_cosine_to_original"),
        unrelated_drift=mean_of("unrelated_drift"),
        prefix_drift=mean_of("prefix_drift"),
        concept_losses=concept_losses,
        anchor_losses=anchor_losses,
        steps=len(losses),
        epochs=epochs,
        lr=config.resolved_lr,
        seconds=time.perf_counter() - start_time,
        per_representation=per_rep,
    )
