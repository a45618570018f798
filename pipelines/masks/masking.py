"""Points to masks: Segment Anything with a per-photo embedding cache, the fallback without it,
refinement.

This module only turns clicks into masks. Loading SAM (its variants, the one shared predictor) is
`sam_models`; downloading its checkpoint is `downloads`; without SAM the masks come from the subject
model's map (`subject`) and from GrabCut alone (`grabcut`). The flow for one photo:

    predictor, notices = sam_models.get_predictor(settings)   # None when SAM cannot be had
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

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from pipelines.images import image_hash
from pipelines.masks.grabcut import click_radius, grabcut_mask
from pipelines.settings import SAM_CHECKPOINT_NAMES
from pipelines.types import ClickPoint

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from segment_anything.modeling import Sam

    from pipelines.masks.subject import SubjectModel

# Why SAM is missing (no file, a failed download, auto-download off) is the caller's notice
# (`sam_models.get_predictor`); these only say what the masks are made with instead.
GRABCUT_NOTICE = (f"No SAM checkpoint: masks come from GrabCut (rough: run `python -m pipelines download subject` "
                  "for a subject model that finds what was clicked, or put "
                  f"{SAM_CHECKPOINT_NAMES['vit_h']} in the checkpoint folder, BACKDROP_CHECKPOINT_DIR, default "
                  "checkpoints/, or run `python -m pipelines download sam` for Segment Anything masks)")
SUBJECT_FALLBACK_NOTICE = ("No SAM checkpoint: masks come from the subject model {model} and GrabCut, mask 2 "
                           "from GrabCut alone (put "
                           f"{SAM_CHECKPOINT_NAMES['vit_h']} in the checkpoint folder for Segment Anything masks)")


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
        method: "sam", "subject" (the subject model's map and GrabCut) or "grabcut".
        notices: things the person should know (fallbacks).
        distinct: how many of the candidates are different masks: 3, or 1 when the model gives one
            (GrabCut, and ONNX decoders exported with a single mask output, repeat it three times),
            2 for the subject model's fallback; the last distinct one fills the rest.
        names: what each distinct candidate is, where they are not ranked by a score (the
            fallback's); empty for SAM's.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    method: str
    notices: list[str] = field(default_factory=list)
    distinct: int = 3
    names: tuple[str, ...] = ()

    def next_mask_input(self, candidate: int = 0) -> np.ndarray:
        """The `mask_input` for the next click: the chosen candidate's logits, float32 (1, h, w)."""
        if not 0 <= candidate < len(self.low_res_logits):
            raise ValueError(f"mask candidate {candidate} does not exist (0 to {len(self.low_res_logits) - 1})")
        return self.low_res_logits[candidate][None].copy()


# ----------------------------------------------------------------------------------------------
# Predicting: one embedding per photo, then prompt encoder + mask decoder per click
# ----------------------------------------------------------------------------------------------
@dataclass
class _Embedding:
    features: "torch.Tensor | np.ndarray"  # (1, C, h, w) float32, the image encoder's output (torch on
    # the model's device for the PyTorch models, numpy for the ONNX ones)
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
        sam: a loaded SAM model (`sam_models.load_sam`), in eval mode.
        cache_size: how many photos' embeddings are kept; the least recently used goes first.
        variant: the `sam_models.SAM_VARIANTS` name the model was built as (for the status line).
        notices: what the person should know about this model, shown with its masks.
    """

    def __init__(self, sam: "Sam", cache_size: int = 4, variant: str = "custom",
                 notices: list[str] | None = None) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self._start_cache(cache_size, variant, notices)
        self.sam = sam
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)  # stateless, shareable
        self._dense_pe: "torch.Tensor | None" = None  # the decoder's positional encoding, see _image_pe

    def _start_cache(self, cache_size: int, variant: str, notices: list[str] | None) -> None:
        """The embedding cache and the status fields (shared with `sam_onnx.OnnxMaskPredictor`)."""
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self.cache_size = cache_size
        self.variant = variant
        self.notices = list(notices or [])
        self.embed_count = 0
        self._cache: OrderedDict[str, _Embedding] = OrderedDict()
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()  # guards _cache, _pending, embed_count; held only briefly
        self._encoder_lock = threading.Lock()  # one image encoding at a time

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
            ValueError: a mask_input of the wrong shape (the points are checked by `predict_masks`).
        """
        import torch
        import torch.nn.functional as F

        key, emb = self._embedding(image)  # points: checked by predict_masks (or validate_request)
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
                  mask_input: np.ndarray | None = None,
                  subject_model: "SubjectModel | None" = None, *, checked: bool = False) -> MaskPrediction:
    """Candidate subject masks for the clicks: SAM when a predictor is given, else the fallback.

    The fallback: with a subject model (`subject.get_subject_model`), the clicked part of its
    map, refined by GrabCut with the clicks as sure subject / background (`subject.subject_from_clicks`;
    mean IoU 0.82 from one click on real single subjects with u2netp, against 0.73 for GrabCut alone),
    and GrabCut alone as the second candidate: it is the better of the two on a quarter of those
    photos and in crowded scenes, where the map joins touching things. With no model, GrabCut alone.

    Args:
        image: the RGB photo.
        points: clicks, each (X, Y) in photo pixels; label 1 = subject, 0 = not subject.
        predictor: a `MaskPredictor`, or None to use the fallback.
        mask_input: float (1, h, w) logits of the previous click's chosen candidate (SAM only;
            the fallback ignores it).
        subject_model: the subject model for the fallback, or None (GrabCut alone).
        checked: the points were checked already (`editing.validate_request`); the one check of
            clicks is here otherwise: `MaskPredictor.predict` and `grabcut_mask` trust them.

    Returns:
        A `MaskPrediction`. Without SAM, scores 0, named candidates (two with a subject model, one
        without, repeated to three) and a notice. A best
        mask far too small to be what was clicked (`too_small`) adds a notice saying what to do.

    Raises:
        ValueError: no positive point, or a point outside the photo.
    """
    if not checked:
        check_points(image, points)
    if predictor is not None:
        return with_size_notice(predictor.predict(image, points, mask_input=mask_input), points)
    if subject_model is not None:
        from pipelines.masks.subject import subject_from_clicks

        with ThreadPoolExecutor(1) as pool:  # OpenCV lets go of the GIL: GrabCut alone runs beside
            alone = pool.submit(grabcut_mask, image, points)
            candidates = [subject_from_clicks(image, points, subject_model.probability(image)), alone.result()]
        names = ("subject model", "GrabCut alone")
        method, notice = "subject", SUBJECT_FALLBACK_NOTICE.format(model=subject_model.name)
    else:
        candidates, names = [grabcut_mask(image, points)], ("GrabCut",)
        method, notice = "grabcut", GRABCUT_NOTICE
    logits = [_to_low_res_logits(c) for c in candidates]
    pad = 3 - len(candidates)  # the last distinct candidate fills the three places
    return with_size_notice(MaskPrediction(
        masks=np.stack(candidates + candidates[-1:] * pad),
        scores=np.zeros(3, dtype=np.float32),
        low_res_logits=np.stack(logits + logits[-1:] * pad),
        method=method,
        notices=[notice],
        distinct=len(names),
        names=names,
    ), points)


def too_small(area: int, shape: tuple[int, int], positives: int = 1) -> bool:
    """Whether a mask of `area` pixels on a photo of `shape` (H, W) is far too small to be what was
    clicked: under twice the spots the `positives` subject clicks mark (`click_radius`), and in any
    case under 64 pixels: 226 pixels for one click on a 500x375 photo, 12723 on 12 MP (4000x3000)."""
    return area < max(64, 2 * positives * np.pi * click_radius(shape) ** 2)


def with_size_notice(prediction: MaskPrediction, points: list[ClickPoint]) -> MaskPrediction:
    """`prediction` with one more notice when its best mask is far too small for the clicks
    (`too_small`): what it covers and what to do, naming a larger candidate when there is one.
    Returns it (changed in place)."""
    masks = prediction.masks[:prediction.distinct]
    areas = [int(m.sum()) for m in masks]
    shape, positives = masks.shape[1:], sum(p.label == 1 for p in points)
    if not too_small(areas[0], shape, positives):
        return prediction
    covers = "is empty" if areas[0] == 0 else f"covers only {areas[0]} pixels"
    larger = next((k for k, a in enumerate(areas) if not too_small(a, shape, positives)), None)
    if larger is not None:
        advice = f"pick mask {larger + 1}, or click nearer the middle of the subject"
    else:
        advice = "click nearer the middle of the subject, or add a click on each of its parts"
    prediction.notices.append(f"The mask {covers}, hardly more than the clicked spot: {advice}")
    return prediction


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
