"""Points to masks: Segment Anything with a per-photo embedding cache, refinement, GrabCut fallback.

The flow for one photo:

    predictor, notices = get_predictor(settings)          # None when no SAM checkpoint can be had
    predictor.embed(photo)                                 # at upload: the slow part, done once
    result = predict_masks(photo, points, predictor)       # each click: prompt encoder + mask decoder
    result = predict_masks(photo, more_points, predictor,
                           mask_input=result.next_mask_input())   # feed the chosen candidate back
    repaint = refine_mask(result.masks[0], grow=2, feather=4)     # what diffusion receives

Coordinates are photo pixels as the person sees the photo (EXIF-rotated), each point (X, Y): X is
the column, Y the row. Subject masks are bool (H, W), True = subject. Only `refine_mask` produces
the mask handed to diffusion; its docstring states that convention.

Heavy modules (torch, segment_anything, cv2) are imported inside the functions that need them, so
importing this module stays cheap and touches neither weights nor the network.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import tempfile
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from .images import image_hash
from .settings import SAM_CHECKPOINT_NAMES, SAM_MODEL_TYPES, Settings
from .types import ClickPoint

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from segment_anything.modeling import Sam

log = logging.getLogger(__name__)

# The official checkpoints: file name -> (start of its SHA-256, size in bytes). The names end in
# the first hex digits of the file's SHA-256 (torch-hub style), so the hash prefix comes from the
# name itself; the sizes are what dl.fbaipublicfiles.com serves.
SAM_CHECKPOINT_SIZES = {
    "sam_vit_h_4b8939.pth": 2564550879,
    "sam_vit_l_0b3195.pth": 1249524607,
    "sam_vit_b_01ec64.pth": 375042383,
}
SAM_DOWNLOADS: dict[str, tuple[str, int | None]] = {
    name: (re.search(r"_([0-9a-f]+)\.pth$", name).group(1), SAM_CHECKPOINT_SIZES[name])
    for name in SAM_CHECKPOINT_NAMES.values()
}
DOWNLOAD_TIMEOUT = 10.0  # seconds to connect, and the longest a read may stall; offline fails fast

# The architecture of each official variant, in the terms `_infer_sam_config` reads from a state
# dict (all three share the 1024-pixel input, 16-pixel patches, 256-channel prompts and decoder).
_COMMON = dict(img_size=1024, patch_size=16, mlp_ratio=4.0, window_size=14, use_abs_pos=True,
               prompt_embed_dim=256, mask_in_chans=16, num_multimask_outputs=3, decoder_depth=2,
               decoder_mlp_dim=2048, decoder_num_heads=8, attention_downsample_rate=2,
               iou_head_depth=3, iou_head_hidden_dim=256)
OFFICIAL_SAM_CONFIGS = {
    "vit_h": dict(_COMMON, embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    "vit_l": dict(_COMMON, embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_b": dict(_COMMON, embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
}

GRABCUT_NOTICE = (f"No SAM checkpoint: masks come from GrabCut (rougher edges; put {SAM_CHECKPOINT_NAMES['vit_h']} "
                  "in the checkpoint folder, BACKDROP_CHECKPOINT_DIR, default checkpoints/, or allow "
                  "BACKDROP_SAM_AUTO_DOWNLOAD for Segment Anything masks)")


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------
@dataclass
class MaskPrediction:
    """The candidates for one set of clicks.

    Attributes:
        masks: (3, H, W) bool at the photo's size, True = subject; best-scoring candidate first.
        scores: (3,) float32, SAM's predicted IoU of each candidate, descending (0 for GrabCut,
            which has no quality estimate).
        low_res_logits: (3, h, w) float32 mask logits in SAM's low-resolution input frame (h = w =
            256 for the official models), same order as `masks`; feed one back as `mask_input`.
        method: "sam" or "grabcut".
        notices: things the person should know (fallbacks).
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    method: str
    notices: list[str] = field(default_factory=list)

    def next_mask_input(self, candidate: int = 0) -> np.ndarray:
        """The `mask_input` for the next click: the chosen candidate's logits, float32 (1, h, w)."""
        if not 0 <= candidate < len(self.low_res_logits):
            raise ValueError(f"mask candidate {candidate} does not exist (0 to {len(self.low_res_logits) - 1})")
        return self.low_res_logits[candidate][None].copy()


# ----------------------------------------------------------------------------------------------
# Loading SAM
# ----------------------------------------------------------------------------------------------
_SAM_CACHE: dict[tuple, Any] = {}
_SAM_CACHE_LOCK = threading.Lock()


def load_sam(checkpoint: Path, model_type: str = "vit_h", device: str = "cpu") -> "Sam":
    """Load a Segment Anything model from a state-dict checkpoint, cached per (file, type, device).

    The architecture is read from the tensor shapes, so any SAM-architecture checkpoint loads: an
    official file is built through `segment_anything.sam_model_registry`; a file of another
    official variant than `model_type` (a vit_b file given as vit_h) loads as what it is, with a
    notice; any other size (the tests' tiny model) is built from `segment_anything.modeling`.

    Args:
        checkpoint: a `.pth` file holding SAM's state dict (as the official downloads do).
        model_type: the variant the settings ask for: vit_h, vit_l or vit_b.
        device: torch device string. Weights are read on the CPU, then moved there.

    Returns:
        The model in eval mode. Two attributes describe it: `backdrop_type` (vit_h, vit_l, vit_b or
        "custom") and `backdrop_notices` (list of str, e.g. the variant differs from `model_type`).

    Raises:
        ValueError: `model_type` is not one of vit_h, vit_l, vit_b.
        RuntimeError: one line: the file is missing, unreadable, not a SAM state dict, or its
            tensors do not fit the architecture their shapes describe.
    """
    if model_type not in SAM_MODEL_TYPES:
        raise ValueError(f"SAM model type {model_type!r} is not one of {', '.join(SAM_MODEL_TYPES)}")
    checkpoint = Path(checkpoint)
    try:
        stat = checkpoint.stat()
    except OSError as err:
        raise RuntimeError(f"SAM checkpoint {checkpoint} does not exist") from err
    # The file's size and time are part of the key: a replaced checkpoint is loaded again.
    key = (str(checkpoint.resolve()), stat.st_size, stat.st_mtime_ns, model_type, str(device))
    with _SAM_CACHE_LOCK:  # held while loading: two sessions asking at once load the weights once
        if key not in _SAM_CACHE:
            _SAM_CACHE[key] = _load_sam_uncached(checkpoint, model_type, device)
        return _SAM_CACHE[key]


def _load_sam_uncached(checkpoint: Path, model_type: str, device: str) -> "Sam":
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files; all mean the same here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeError(f"SAM checkpoint {checkpoint} is not a readable PyTorch file ({first[:160]})") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # some fine-tuning scripts wrap the state dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(f"SAM checkpoint {checkpoint} does not hold a state dict of tensors")

    config = _infer_sam_config(state, checkpoint)
    sam_type, notices = _resolve_sam_type(config, model_type)
    sam = _build_sam(config, sam_type)
    _check_state_dict(sam, state, checkpoint, sam_type)
    sam.load_state_dict(state, strict=True)
    sam = sam.to(device).eval()
    sam.backdrop_type = sam_type
    sam.backdrop_notices = notices
    for notice in notices:
        log.warning(notice)
    return sam


def _infer_sam_config(state: dict, source: Path | str = "the checkpoint") -> dict:
    """Read SAM's architecture from a state dict's tensor shapes.

    Returns a dict with the keys of `OFFICIAL_SAM_CONFIGS` entries.

    Raises:
        RuntimeError: a tensor SAM always has is missing.
    """
    def shape(name: str) -> tuple[int, ...]:
        if name not in state:
            raise RuntimeError(f"SAM checkpoint {source} is not a Segment Anything checkpoint (no {name})")
        return tuple(state[name].shape)

    def count(prefix: str) -> int:
        found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
        return max(found) + 1 if found else 0

    embed_dim, _, patch_size, _ = shape("image_encoder.patch_embed.proj.weight")
    depth = count("image_encoder.blocks.")
    if depth == 0:
        raise RuntimeError(f"SAM checkpoint {source} is not a Segment Anything checkpoint (no encoder blocks)")
    # rel_pos_h is (2 * size - 1, head_dim): its width gives the heads, its length tells a global
    # block (size = the patch grid) from a windowed one (size = the window).
    rel_len, head_dim = shape("image_encoder.blocks.0.attn.rel_pos_h")
    use_abs_pos = "image_encoder.pos_embed" in state
    if use_abs_pos:
        grid = shape("image_encoder.pos_embed")[1]
    else:  # without absolute positions the grid is only visible in a global block's rel_pos
        grid = max((shape(f"image_encoder.blocks.{i}.attn.rel_pos_h")[0] + 1) // 2 for i in range(depth))
    lengths = [shape(f"image_encoder.blocks.{i}.attn.rel_pos_h")[0] for i in range(depth)]
    global_attn_indexes = tuple(i for i, n in enumerate(lengths) if n == 2 * grid - 1)
    windowed = [n for n in lengths if n != 2 * grid - 1]
    window_size = (windowed[0] + 1) // 2 if windowed else 0

    prompt_dim = shape("prompt_encoder.no_mask_embed.weight")[1]
    self_attn = shape("mask_decoder.transformer.layers.0.self_attn.q_proj.weight")[0]
    cross_attn = shape("mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight")[0]
    return dict(
        img_size=grid * patch_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // head_dim,
        mlp_ratio=shape("image_encoder.blocks.0.mlp.lin1.weight")[0] / embed_dim,
        window_size=window_size,
        global_attn_indexes=global_attn_indexes,
        use_abs_pos=use_abs_pos,
        prompt_embed_dim=prompt_dim,
        mask_in_chans=shape("prompt_encoder.mask_downscaling.3.weight")[0],
        num_multimask_outputs=shape("mask_decoder.mask_tokens.weight")[0] - 1,
        decoder_depth=count("mask_decoder.transformer.layers."),
        decoder_mlp_dim=shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
        # The decoder's head count leaves no trace in any shape. SAM uses 8 heads at 256 channels
        # (head width 32, 16 after the 2x cross-attention downsampling); narrower decoders are
        # assumed to keep the 16-wide cross-attention heads, as the tests' tiny model does.
        decoder_num_heads=max(1, min(8, prompt_dim // 16)),
        attention_downsample_rate=self_attn // cross_attn,
        iou_head_depth=count("mask_decoder.iou_prediction_head.layers."),
        iou_head_hidden_dim=shape("mask_decoder.iou_prediction_head.layers.0.weight")[0],
    )


def _resolve_sam_type(config: dict, model_type: str) -> tuple[str, list[str]]:
    """Which official variant `config` is ("custom" if none), and a notice when it is not `model_type`."""
    if config == OFFICIAL_SAM_CONFIGS[model_type]:
        return model_type, []
    for other, official in OFFICIAL_SAM_CONFIGS.items():
        if config == official:
            return other, [f"the SAM checkpoint is a {other} model, not {model_type}: loaded as {other}"]
    described = (f"image {config['img_size']} px, encoder width {config['embed_dim']}, depth {config['depth']}, "
                 f"prompt width {config['prompt_embed_dim']}")
    return "custom", [f"the SAM checkpoint is not an official {model_type} model ({described}): loaded as it is"]


def _build_sam(config: dict, sam_type: str) -> "Sam":
    """An untrained SAM of `config`'s architecture: the official builder for official variants."""
    if sam_type in OFFICIAL_SAM_CONFIGS:
        from segment_anything import sam_model_registry

        # checkpoint=None: the registry's own loader reads without map_location (a CUDA-saved
        # file would fail on a CPU machine); we load the state dict ourselves.
        return sam_model_registry[sam_type](checkpoint=None)

    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    c = config
    grid = c["img_size"] // c["patch_size"]
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=c["img_size"], patch_size=c["patch_size"], embed_dim=c["embed_dim"], depth=c["depth"],
            num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"], out_chans=c["prompt_embed_dim"],
            qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_abs_pos=c["use_abs_pos"],
            use_rel_pos=True, window_size=c["window_size"], global_attn_indexes=c["global_attn_indexes"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=c["prompt_embed_dim"], image_embedding_size=(grid, grid),
            input_image_size=(c["img_size"], c["img_size"]), mask_in_chans=c["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=c["num_multimask_outputs"],
            transformer=TwoWayTransformer(
                depth=c["decoder_depth"], embedding_dim=c["prompt_embed_dim"], mlp_dim=c["decoder_mlp_dim"],
                num_heads=c["decoder_num_heads"], attention_downsample_rate=c["attention_downsample_rate"],
            ),
            transformer_dim=c["prompt_embed_dim"], iou_head_depth=c["iou_head_depth"],
            iou_head_hidden_dim=c["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def _check_state_dict(sam: "Sam", state: dict, checkpoint: Path, sam_type: str) -> None:
    """Raise one clear line when the state dict does not fit the model (instead of torch's page)."""
    expected = sam.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k} is {tuple(state[k].shape)}, expected {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise RuntimeError(f"SAM checkpoint {checkpoint} does not fit the {sam_type} architecture: "
                           f"{'; '.join(problems[:3])}{more}")


# ----------------------------------------------------------------------------------------------
# Predicting: one embedding per photo, then prompt encoder + mask decoder per click
# ----------------------------------------------------------------------------------------------
@dataclass
class _Embedding:
    features: "torch.Tensor"  # (1, C, h, w) float32 on the model's device, the image encoder's output
    original_size: tuple[int, int]  # the photo's (H, W)
    input_size: tuple[int, int]  # (H, W) after resizing the long side to the encoder's input size


class _Pending:
    """An embedding being computed by one thread, waited for by others asking for the same photo."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: _Embedding | None = None
        self.error: BaseException | None = None


class MaskPredictor:
    """SAM point prompts with a bounded, thread-safe cache of image embeddings.

    Why not `SamPredictor`: it keeps one image's state (features, sizes) on itself, so two sessions
    sharing it would need a lock around "set state + predict" and would then wait on each other's
    clicks. Instead each photo's (features, original_size, input_size) lives in the cache, and a
    click runs the model's prompt encoder and mask decoder directly on those features, exactly as
    `SamPredictor.predict_torch` does. SAM's modules keep no state between calls in eval mode, so
    concurrent clicks need no lock at all. The cache itself is guarded by a short lock, never held
    while the model runs. Image encoding takes a separate lock (one embedding at a time bounds the
    encoder's activation memory, several GB for vit_h); clicks never wait on it, so embedding a new
    photo does not delay clicks on photos already embedded.

    Args:
        sam: a loaded SAM model (`load_sam`), in eval mode.
        cache_size: how many photos' embeddings are kept; the least recently used goes first.
    """

    def __init__(self, sam: "Sam", cache_size: int = 4) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self.sam = sam
        self.cache_size = cache_size
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)  # stateless, shareable
        self.embed_count = 0
        self._cache: OrderedDict[str, _Embedding] = OrderedDict()
        self._pending: dict[str, _Pending] = {}
        self._dense_pe: "torch.Tensor | None" = None  # the decoder's positional encoding, see _image_pe
        self._lock = threading.Lock()  # guards _cache, _pending, embed_count; held only briefly
        self._encoder_lock = threading.Lock()  # one image encoding at a time

    @property
    def model_type(self) -> str:
        """vit_h, vit_l, vit_b or custom (as `load_sam` found it)."""
        return getattr(self.sam, "backdrop_type", "custom")

    def embed(self, image: Image.Image) -> str:
        """Compute the photo's image embedding unless it is cached; return its cache key.

        Call it when the photo is uploaded, so the first click is fast too. Safe to call from many
        threads: a photo being embedded by one thread is waited for, not embedded twice.

        Args:
            image: the RGB photo (any size).

        Returns:
            The cache key: `images.image_hash` of the photo.
        """
        return self._embedding(image)[0]

    def _embedding(self, image: Image.Image) -> tuple[str, _Embedding]:
        image = image if image.mode == "RGB" else image.convert("RGB")
        key = image_hash(image)
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)  # most recently used
                return key, entry
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = _Pending()
        if not owner:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            return key, pending.entry
        try:
            with self._encoder_lock:
                entry = self._encode(image)
            with self._lock:
                self.embed_count += 1
                self._cache[key] = entry
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)  # least recently used
            pending.entry = entry
            return key, entry
        except BaseException as exc:
            pending.error = exc
            raise
        finally:
            with self._lock:
                self._pending.pop(key, None)
            pending.done.set()

    def _encode(self, image: Image.Image) -> _Embedding:
        """The image encoder on one photo, preprocessed as `SamPredictor.set_image` does."""
        import torch

        pixels = np.asarray(image, dtype=np.uint8)  # (H, W, 3) RGB, SAM's image_format
        resized = self.transform.apply_image(pixels)  # long side = encoder input size
        tensor = torch.as_tensor(resized, device=self.sam.device).permute(2, 0, 1).contiguous()[None]
        with torch.inference_mode():
            features = self.sam.image_encoder(self.sam.preprocess(tensor))  # normalise + pad
        return _Embedding(features, pixels.shape[:2], tuple(tensor.shape[-2:]))

    def predict(self, image: Image.Image, points: list[ClickPoint],
                mask_input: np.ndarray | None = None) -> MaskPrediction:
        """SAM's three candidate masks for the clicks on a photo.

        Args:
            image: the RGB photo; its embedding is computed on first use and cached.
            points: the clicks, each (X, Y) in photo pixels, label 1 = subject, 0 = not subject.
                At least one positive point.
            mask_input: the previous prediction's low-resolution logits of the chosen candidate,
                float (1, h, w) or (h, w) with h = w = 4x the embedding grid (256 for the official
                models), as SAM's demo feeds them back on each further click; None on the first.

        Returns:
            A `MaskPrediction` with masks (3, H, W) bool at the photo's size, best score first.

        Raises:
            ValueError: no positive point, a point outside the photo, or a mask_input of the wrong shape.
        """
        import torch
        import torch.nn.functional as F

        check_points(image, points)
        key, emb = self._embedding(image)
        # 1. Points into the encoder's input frame, as SamPredictor.predict does.
        coords = np.array([[p.x, p.y] for p in points], dtype=np.float64)
        coords = self.transform.apply_coords(coords, emb.original_size)
        device = emb.features.device
        coords_t = torch.as_tensor(coords, dtype=torch.float, device=device)[None]  # (1, N, 2) X, Y
        labels_t = torch.as_tensor([p.label for p in points], dtype=torch.int, device=device)[None]  # (1, N)
        mask_t = None
        if mask_input is not None:
            mask_t = torch.as_tensor(self._check_mask_input(mask_input, emb), dtype=torch.float, device=device)
        with torch.inference_mode():
            # 2. Prompt encoder and mask decoder on the cached features (no per-image predictor state).
            sparse, dense = self.sam.prompt_encoder(points=(coords_t, labels_t), boxes=None, masks=mask_t)
            low_res, iou = self.sam.mask_decoder(
                image_embeddings=emb.features,
                image_pe=self._image_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
            # 3. Upscale to the photo as Sam.postprocess_masks does (to the encoder frame, unpad,
            # resize to (H, W)), minus its second resize when the photo already has the input
            # size: a same-size bilinear resize is the identity and costs ~10 ms a click on a CPU.
            size = self.sam.image_encoder.img_size
            logits = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
            logits = logits[..., : emb.input_size[0], : emb.input_size[1]]
            if emb.input_size != emb.original_size:
                logits = F.interpolate(logits, emb.original_size, mode="bilinear", align_corners=False)
            masks = (logits > self.sam.mask_threshold)[0].cpu().numpy()
        scores = iou[0].float().cpu().numpy()
        order = np.argsort(-scores, kind="stable")  # best first
        return MaskPrediction(
            masks=masks[order],
            scores=scores[order].astype(np.float32),
            low_res_logits=low_res[0].float().cpu().numpy()[order].astype(np.float32),
            method="sam",
            notices=[],
        )

    def _image_pe(self) -> "torch.Tensor":
        """`prompt_encoder.get_dense_pe()`, (1, C, h, w): it depends on the model only, yet SAM
        recomputes it on every click (sin/cos over the whole grid, 10-50 ms on a busy CPU)."""
        if self._dense_pe is None:  # a race computes it twice, harmlessly: the same tensor
            self._dense_pe = self.sam.prompt_encoder.get_dense_pe()
        return self._dense_pe

    def _check_mask_input(self, mask_input: np.ndarray, emb: _Embedding) -> np.ndarray:
        size = 4 * emb.features.shape[-1]  # the decoder's output: 4x the embedding grid
        mask_input = np.asarray(mask_input, dtype=np.float32)
        if mask_input.ndim == 2:
            mask_input = mask_input[None]
        if mask_input.shape != (1, size, size):
            raise ValueError(f"mask_input has shape {mask_input.shape}; expected (1, {size}, {size}) "
                             "low-resolution logits from the previous prediction")
        return mask_input[None]  # (1, 1, h, w): batch of one


def check_points(image: Image.Image, points: list[ClickPoint]) -> None:
    """Raise a one-line ValueError unless there is a positive point and every point is inside."""
    width, height = image.size
    for p in points:
        if not (0 <= p.x < width and 0 <= p.y < height):
            raise ValueError(f"point ({p.x}, {p.y}) is outside the photo ({width} x {height})")
    if not any(p.label == 1 for p in points):
        raise ValueError("click at least once on the subject (a positive point)")


def predict_masks(image: Image.Image, points: list[ClickPoint], predictor: MaskPredictor | None,
                  mask_input: np.ndarray | None = None) -> MaskPrediction:
    """Candidate subject masks for the clicks: SAM when a predictor is given, else GrabCut.

    Args:
        image: the RGB photo.
        points: clicks, each (X, Y) in photo pixels; label 1 = subject, 0 = not subject.
        predictor: a `MaskPredictor`, or None to use the GrabCut fallback.
        mask_input: float (1, h, w) logits of the previous click's chosen candidate (SAM only;
            GrabCut ignores it).

    Returns:
        A `MaskPrediction`. With GrabCut, three identical candidates, scores 0, and a notice.

    Raises:
        ValueError: no positive point, or a point outside the photo.
    """
    check_points(image, points)
    if predictor is not None:
        return predictor.predict(image, points, mask_input=mask_input)
    subject = grabcut_mask(image, points)
    logits = _to_low_res_logits(subject)
    return MaskPrediction(
        masks=np.repeat(subject[None], 3, axis=0),
        scores=np.zeros(3, dtype=np.float32),
        low_res_logits=np.repeat(logits[None], 3, axis=0),
        method="grabcut",
        notices=[GRABCUT_NOTICE],
    )


def _to_low_res_logits(subject: np.ndarray, size: int = 256) -> np.ndarray:
    """A subject mask as SAM-style low-resolution logits: (size, size) float32, long side fitted,
    padded at the bottom/right like SAM's input frame, +10 inside and -10 outside."""
    import cv2

    h, w = subject.shape
    scale = size / max(h, w)
    new_w, new_h = max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5))
    small = cv2.resize(subject.astype(np.uint8), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    logits = np.full((size, size), -10.0, dtype=np.float32)
    logits[:new_h, :new_w][small > 0] = 10.0
    return logits


# ----------------------------------------------------------------------------------------------
# GrabCut fallback
# ----------------------------------------------------------------------------------------------
def grabcut_mask(image: Image.Image, points: list[ClickPoint], iterations: int = 5,
                 max_side: int = 640) -> np.ndarray:
    """A subject mask from OpenCV GrabCut, seeded by the clicks (the fallback without SAM).

    Seeds: a small disk around each positive point is sure subject, around each negative point sure
    background, and everything else (the image border included) probable background. The subject's
    colour model is thus learned from the clicked places only, and the subject grows out from them
    over regions that look alike; clicking each differently coloured part of a subject adds it.
    (Starting the interior as probable subject, as GrabCut's rectangle mode does, lets background
    colours that do not touch the border leak into the subject.) Afterwards only the parts
    connected to a positive point are kept, which drops stray look-alike blobs elsewhere.

    Args:
        image: the RGB photo.
        points: clicks, each (X, Y) in photo pixels; at least one positive.
        iterations: GrabCut iterations.
        max_side: GrabCut runs on a copy whose long side is at most this (it is slow on large
            photos); the mask is scaled back to the photo's size.

    Returns:
        (H, W) bool at the photo's size, True = subject.
    """
    import cv2

    check_points(image, points)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    small = rgb if scale == 1.0 else cv2.resize(
        rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]

    seeds = np.full((h, w), cv2.GC_PR_BGD, dtype=np.uint8)
    radius = max(2, round(0.015 * min(h, w)))
    centres = [(min(w - 1, int(p.x * scale)), min(h - 1, int(p.y * scale)), p.label) for p in points]
    for x, y, label in centres:
        cv2.circle(seeds, (x, y), radius, cv2.GC_FGD if label == 1 else cv2.GC_BGD, thickness=-1)

    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(np.ascontiguousarray(small[..., ::-1]), seeds, None, bgd_model, fgd_model,
                    iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error as err:
        raise ValueError("GrabCut found no background to learn from: click a smaller part of the photo") from err
    subject = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)

    # Keep the connected parts that hold a positive click.
    _, labels = cv2.connectedComponents(subject.astype(np.uint8), connectivity=8)
    keep = {labels[y, x] for x, y, label in centres if label == 1} - {0}
    subject = np.isin(labels, list(keep))

    if scale != 1.0:
        subject = cv2.resize(subject.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) >= 0.5
    return subject


# ----------------------------------------------------------------------------------------------
# Refinement and preview
# ----------------------------------------------------------------------------------------------
def refine_mask(subject: np.ndarray, grow: int = 0, feather: int = 0, fill_holes: int = 0, min_area: int = 0,
                edit_subject: bool = False) -> np.ndarray:
    """Turn a subject mask into the mask handed to diffusion.

    The convention, used by every stage (see `pipelines.types`): float32 (H, W) in [0, 1] where
    1 (white) = repaint and 0 = keep the original pixel exactly. By default the background is
    repainted and the subject kept; `edit_subject=True` mirrors that.

    The kept region stays pixel-exact: its weight is exactly 0 on every kept pixel, and the feather
    ramp lies wholly inside the repaint region, rising with the Euclidean distance d (pixels) from
    the kept region as min(1, d / (feather + 1)), i.e. `feather` pixels of partial weight.

    Steps, in order:
        1. fill holes in the subject (background areas enclosed by it, 4-connected) smaller than
           `fill_holes` pixels;
        2. drop subject specks (8-connected parts) smaller than `min_area` pixels;
        3. grow (>0) or shrink (<0) the subject by |grow| pixels (Euclidean distance). This always
           applies to the subject: with the background repainted, grow > 0 keeps a margin of the
           subject's surroundings (no halo of cut-off edges); with the subject repainted, grow > 0
           repaints a margin around it (no outline of the old subject left);
        4. kept region = subject, or its complement when `edit_subject`;
        5. feather into the repaint region.

    Args:
        subject: (H, W) bool (or 0/1), True = subject.
        grow: pixels to grow (>0) or shrink (<0) the subject.
        feather: width of the soft seam in pixels, inside the repaint region (0 = hard edge).
        fill_holes: fill holes of fewer pixels than this (0 = none).
        min_area: drop subject parts of fewer pixels than this (0 = none).
        edit_subject: repaint the subject and keep the background.

    Returns:
        float32 (H, W) in [0, 1], 1 = repaint.

    Raises:
        ValueError: `subject` is not 2-D, or feather / fill_holes / min_area is negative.
    """
    import cv2

    subject = np.asarray(subject)
    if subject.ndim != 2:
        raise ValueError(f"the subject mask must be 2-D (H, W), got shape {subject.shape}")
    for name, value in (("feather", feather), ("fill_holes", fill_holes), ("min_area", min_area)):
        if value < 0:
            raise ValueError(f"{name} must be 0 or more, got {value}")
    subject = subject.astype(bool)

    # 1. Holes: 4-connected background parts not touching the border (the dual of 8-connected
    # subject parts, so a diagonal gap in the subject's outline does not enclose a "hole").
    if fill_holes > 0:
        count, labels, stats, _ = cv2.connectedComponentsWithStats((~subject).astype(np.uint8), connectivity=4)
        border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
        small = [i for i in range(1, count) if i not in border and stats[i, cv2.CC_STAT_AREA] < fill_holes]
        subject = subject | np.isin(labels, small)
    # 2. Specks.
    if min_area > 0:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(subject.astype(np.uint8), connectivity=8)
        large = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_area]
        subject = np.isin(labels, large)
    # 3. Grow / shrink by exact Euclidean distance. distanceTransform measures, for each non-zero
    # pixel, the distance to the nearest zero pixel; pixels beyond the image border do not count as
    # zero, so a subject touching the frame is not shrunk from the frame.
    if grow > 0 and subject.any():
        distance = cv2.distanceTransform((~subject).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        subject = distance <= grow + 1e-3
    elif grow < 0:
        distance = cv2.distanceTransform(subject.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        subject = distance > -grow + 1e-3
    # 4. What is kept.
    kept = ~subject if edit_subject else subject
    repaint = (~kept).astype(np.float32)
    # 5. Feather: the ramp grows away from the kept region, so kept pixels stay exactly 0.
    if feather > 0 and kept.any() and repaint.any():
        distance = cv2.distanceTransform((~kept).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        repaint = np.minimum(1.0, distance / (feather + 1)).astype(np.float32)
        repaint[kept] = 0.0
    return repaint


TINT = (30, 144, 255)  # the subject's tint in the preview (a blue that rarely occurs in skin)
TINT_ALPHA = 0.45


def overlay(image: Image.Image, subject: np.ndarray, points: list[ClickPoint]) -> Image.Image:
    """A preview for the page: the subject tinted blue, positive points green, negative red.

    Args:
        image: the RGB photo, (W, H).
        subject: (H, W) bool, True = subject (the tinted region).
        points: the clicks, each (X, Y) in photo pixels.

    Returns:
        An RGB image of the photo's size. Pixels outside the subject and away from points are the
        photo's own.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    subject = np.asarray(subject, dtype=bool)
    if subject.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {subject.shape} does not match the photo ({rgb.shape[0]}, {rgb.shape[1]})")
    tinted = rgb.copy()
    tinted[subject] = rgb[subject] * (1 - TINT_ALPHA) + np.array(TINT, np.float32) * TINT_ALPHA
    preview = Image.fromarray(np.clip(np.rint(tinted), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(preview)
    radius = max(3, round(min(image.size) / 100))
    for p in points:
        colour = (0, 255, 0) if p.label == 1 else (255, 0, 0)
        draw.ellipse((p.x - radius, p.y - radius, p.x + radius, p.y + radius),
                     fill=colour, outline=(255, 255, 255), width=max(1, radius // 3))
    return preview


# ----------------------------------------------------------------------------------------------
# Checkpoint download, the shared predictor, status line
# ----------------------------------------------------------------------------------------------
_DOWNLOAD_LOCK = threading.Lock()


def ensure_sam_checkpoint(settings: Settings, on_progress: Callable[[int, int], None] | None = None) -> Path:
    """The SAM checkpoint's path, downloading the official file first if it is missing.

    Only official file names (`SAM_DOWNLOADS`) are downloaded, from `settings.sam_download_base` +
    name. The file is written under a temporary name beside its destination, its size (when the
    server sends Content-Length, and the known size of the official file) and the SHA-256 prefix
    in its name are checked, and only then is it moved into place; a progress bar goes to stderr.

    Args:
        settings: `sam_checkpoint`, `sam_download_base`, `sam_auto_download` are read.
        on_progress: called as on_progress(bytes_done, bytes_total) while downloading
            (bytes_total 0 when unknown).

    Returns:
        The path of the checkpoint, which now exists.

    Raises:
        RuntimeError: one line: the file is missing and may not or cannot be downloaded, or the
            download failed or was damaged (nothing is left at the destination then).
    """
    path = Path(settings.sam_checkpoint)
    if path.is_file():
        return path
    if path.name not in SAM_DOWNLOADS:
        raise RuntimeError(f"SAM checkpoint {path} does not exist (only the official files "
                           f"{', '.join(SAM_DOWNLOADS)} are downloaded)")
    if not settings.sam_auto_download:
        raise RuntimeError(f"SAM checkpoint {path} does not exist and BACKDROP_SAM_AUTO_DOWNLOAD is off")
    sha_prefix, size = SAM_DOWNLOADS[path.name]
    url = settings.sam_download_base.rstrip("/") + "/" + path.name
    with _DOWNLOAD_LOCK:  # two sessions do not download the same 2.5 GB twice
        if not path.is_file():
            download_checkpoint(url, path, sha_prefix, size, on_progress=on_progress)
    return path


def download_checkpoint(url: str, dest: Path, sha256_prefix: str, expected_size: int | None = None,
                        on_progress: Callable[[int, int], None] | None = None,
                        timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Download `url` to `dest` through a temporary file, checking size and SHA-256 prefix.

    Args:
        url: the file's address.
        dest: where it ends up; its folder is created.
        sha256_prefix: the first hex digits of the file's SHA-256.
        expected_size: its size in bytes, when known.
        on_progress: called as on_progress(bytes_done, bytes_total), bytes_total 0 when unknown.
        timeout: seconds to connect, and the longest any single read may stall.

    Returns:
        `dest`.

    Raises:
        RuntimeError: one line; the temporary file is removed and `dest` left untouched.
    """
    dest = Path(dest)
    hint = f"put {dest.name} in {dest.parent}/ yourself"
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"could not download {url}: HTTP {exc.code} {exc.reason} ({hint})") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RuntimeError(f"could not download {url}: {reason} ({hint})") from exc

    with response:
        header = response.headers.get("Content-Length")
        total = int(header) if header and header.isdigit() else None
        if total is not None and expected_size is not None and total != expected_size:
            raise RuntimeError(f"{url} is {total} bytes, expected {expected_size} ({hint})")
        total = total if total is not None else expected_size
        dest.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=dest.parent, prefix=dest.name + ".", suffix=".part", delete=False)
        temp = Path(handle.name)
        digest = hashlib.sha256()
        done = 0
        bar = _progress_bar(total, dest.name)
        try:
            with handle:
                while chunk := response.read(1 << 20):
                    handle.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
                    if on_progress is not None:
                        on_progress(done, total or 0)
            bar.close()
            if total is not None and done != total:
                raise RuntimeError(f"download of {url} stopped at {done} of {total} bytes ({hint})")
            sha = digest.hexdigest()
            if not sha.startswith(sha256_prefix):
                raise RuntimeError(f"downloaded {dest.name} is damaged: its SHA-256 starts with "
                                   f"{sha[:len(sha256_prefix)]}, expected {sha256_prefix} ({hint})")
            os.replace(temp, dest)  # atomic: a reader sees no file or the whole file
        except (OSError, http.client.HTTPException) as exc:  # a stalled or cut connection, a full disk
            raise RuntimeError(f"could not download {url}: {exc or type(exc).__name__} ({hint})") from exc
        finally:
            bar.close()
            temp.unlink(missing_ok=True)
    return dest


def _progress_bar(total: int | None, name: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"downloading {name}", unit="B", unit_scale=True, unit_divisor=1024,
                leave=False)


@dataclass
class _Slot:
    """What `get_predictor` knows about one (checkpoint, type, device, cache size)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    predictor: MaskPredictor | None = None
    notices: list[str] = field(default_factory=list)
    failure: str | None = None  # why no predictor could be had
    failure_file: tuple | None = None  # the checkpoint's (size, mtime) when that failure happened
    progress: tuple[int, int] | None = None  # (done, total) while downloading


_SLOTS: dict[tuple, _Slot] = {}
_SLOTS_LOCK = threading.Lock()


def _slot_key(settings: Settings) -> tuple:
    return (str(Path(settings.sam_checkpoint).expanduser().resolve()), settings.sam_model_type,
            settings.resolve_device(), settings.sam_cache_size, settings.sam_auto_download,
            settings.sam_download_base)


def _file_signature(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def get_predictor(settings: Settings) -> tuple[MaskPredictor | None, list[str]]:
    """The shared `MaskPredictor` for these settings, or None with a notice saying why.

    Cached per (checkpoint, model type, device, cache size, download settings). A missing checkpoint is downloaded
    first when allowed. A failure (missing file with download off, failed download, unusable file)
    is remembered and not retried until the checkpoint file changes, so clicks stay fast offline.
    While one session downloads, others get None and a notice with the progress at once.

    Returns:
        (predictor or None, notices). Never raises for a missing or unusable checkpoint.
    """
    key = _slot_key(settings)
    path = Path(key[0])
    with _SLOTS_LOCK:
        slot = _SLOTS.setdefault(key, _Slot())
    if slot.predictor is not None:
        return slot.predictor, list(slot.notices)
    if slot.failure is not None and _file_signature(path) == slot.failure_file:
        return None, [slot.failure]
    if not slot.lock.acquire(blocking=False):
        progress = slot.progress
        if progress is not None:  # someone is downloading: use GrabCut meanwhile, do not wait minutes
            done, total = progress
            share = f"{100 * done / total:.0f}%" if total else f"{done / 1e6:.0f} MB"
            return None, [f"the SAM checkpoint is downloading ({share}); masks come from GrabCut until then"]
        slot.lock.acquire()  # someone is loading the weights: that takes seconds, wait for it
    try:
        if slot.predictor is None and (slot.failure is None or _file_signature(path) != slot.failure_file):
            _fill_slot(slot, settings, path)
        if slot.predictor is not None:
            return slot.predictor, list(slot.notices)
        return None, [slot.failure]
    finally:
        slot.lock.release()


def _fill_slot(slot: _Slot, settings: Settings, path: Path) -> None:
    def on_progress(done: int, total: int) -> None:
        slot.progress = (done, total)

    try:
        checkpoint = ensure_sam_checkpoint(settings, on_progress=on_progress)
        sam = load_sam(checkpoint, settings.sam_model_type, settings.resolve_device())
    except RuntimeError as exc:
        slot.failure = f"SAM unavailable: {exc}"
        slot.failure_file = _file_signature(path)
        log.warning(slot.failure)
        return
    finally:
        slot.progress = None
    slot.predictor = MaskPredictor(sam, cache_size=settings.sam_cache_size)
    slot.notices = list(getattr(sam, "backdrop_notices", []))
    slot.failure = None


def sam_status(settings: Settings) -> str:
    """One line for the page on what makes the masks. Loads and downloads nothing.

    Examples: "SAM vit_h on cuda", "SAM vit_h on cpu (loads on the first click)",
    "GrabCut fallback: no SAM checkpoint at checkpoints/sam_vit_h_4b8939.pth (put sam_vit_h_4b8939.pth
    in checkpoints/)".
    """
    key = _slot_key(settings)
    device = key[2]
    path = Path(settings.sam_checkpoint)
    name = path.name if path.name in SAM_DOWNLOADS else SAM_CHECKPOINT_NAMES[settings.sam_model_type]
    hint = f"(put {name} in {path.parent}/)"
    with _SLOTS_LOCK:
        slot = _SLOTS.get(key)
    if slot is not None and slot.predictor is not None:
        return f"SAM {slot.predictor.model_type} on {device}"
    if slot is not None and slot.progress is not None:
        done, total = slot.progress
        return f"SAM {settings.sam_model_type}: downloading {path.name} ({100 * done / max(total, 1):.0f}%)"
    if slot is not None and slot.failure is not None and _file_signature(path) == slot.failure_file:
        return f"GrabCut fallback: {slot.failure}" + ("" if "put " in slot.failure else f" {hint}")
    if path.is_file():
        return f"SAM {settings.sam_model_type} on {device} (loads on the first click)"
    if settings.sam_auto_download and path.name in SAM_DOWNLOADS:
        return f"SAM {settings.sam_model_type} on {device} (downloads {path.name} on the first click)"
    return f"GrabCut fallback: no SAM checkpoint at {path} {hint}"
