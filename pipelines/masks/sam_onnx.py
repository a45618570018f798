"""Segment Anything through ONNX Runtime: an exported encoder and decoder, no PyTorch at click time.

    predictor = load_onnx_sam(encoder_path, decoder_path, variant="vit_b_onnx")
    predictor.embed(photo)                                    # the encoder, once per photo (cached)
    result = masking.predict_masks(photo, points, predictor)  # the decoder per click

The decoder is SAM's official ONNX export (segment_anything/utils/onnx.py: inputs image_embeddings,
point_coords, point_labels, mask_input, has_mask_input, orig_im_size; outputs masks,
iou_predictions, low_res_masks), as rembg, samexporter and AnyLabeling ship it. The encoder comes in
two layouts, told apart by its input's rank:

- (1, 3, S, S) float: the photo resized so that its long side is S, normalised with SAM's pixel
  mean and std, zero-padded at the bottom and right (an encoder exported without preprocessing);
- (H, W, 3) float 0-255: the resized photo itself; normalising and padding to 1024 x 1024 happen
  inside the graph (samexporter's --use-preprocess, rembg's files). An input of fixed H x W is
  filled by scaling the photo to fit it and padding with black, as rembg does.

Either way the photo sits at the top-left of the encoder's square frame, scaled to (rh, rw); the
rest follows from that, as in segment_anything's `SamPredictor`:

- a click (X, Y) in photo pixels goes to (X * rw / W, Y * rh / H) (`ResizeLongestSide.apply_coords`),
  and a padding point (0, 0) labelled -1 is added, as SAM's prompt encoder does without a box;
- the decoder's low-resolution logits are upscaled to the square frame, cropped to (rh, rw) and
  resized to the photo (`Sam.postprocess_masks`). The decoder's own `masks` output is not used: some
  exports froze its crop to the aspect ratio of the photo they were traced with.

Candidates: a decoder exported with all its outputs gives 4 masks (0: the single-mask output, 1-3:
the three multimask candidates, used here as the PyTorch path uses multimask_output=True); one
exported with return_single_mask gives 1, repeated three times with `MaskPrediction.distinct` = 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pipelines.errors import one_line
from pipelines.masks.masking import MaskPrediction, MaskPredictor, _Embedding, check_points
from pipelines.types import ClickPoint

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # SAM's, RGB on 0-255
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
FRAME = 1024  # the official encoders' square input, when the encoder's shapes do not say otherwise
MASK_THRESHOLD = 0.0  # Sam.mask_threshold: logits above it are the subject
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input",
                  "orig_im_size")
DECODER_OUTPUTS = ("iou_predictions", "low_res_masks")


def load_onnx_sam(encoder: Path, decoder: Path, cache_size: int = 4, variant: str = "onnx",
                  device: str = "cpu", notices: list[str] | None = None) -> "OnnxMaskPredictor":
    """Open an ONNX SAM encoder and decoder with onnxruntime, checking that they are what they claim.

    Args:
        encoder: the image encoder (.onnx), either layout (see the module's docstring).
        decoder: the prompt encoder + mask decoder in SAM's official export format.
        cache_size: how many photos' embeddings are kept.
        variant: the name for the status line (a `settings.SAM_ONNX_TYPES` entry).
        device: "cpu", or "cuda"/"cuda:N" to use onnxruntime's CUDA provider where it is installed
            (else the CPU, with a notice).
        notices: what the person should know about this model.

    Returns:
        An `OnnxMaskPredictor`.

    Raises:
        RuntimeError: one line: a file is missing, not ONNX, or not the SAM part it should be.
    """
    import onnxruntime as ort

    notices = list(notices or [])
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            index = device.partition(":")[2] or "0"
            providers = [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
        else:
            notices.append("onnxruntime has no CUDA here (pip install onnxruntime-gpu): SAM runs on the CPU")
    sessions = []
    for path, part in ((Path(encoder), "encoder"), (Path(decoder), "decoder")):
        if not path.is_file():
            raise RuntimeError(f"SAM ONNX {part} {path} does not exist")
        options = ort.SessionOptions()
        # The encoder runs once per photo, and at its peak (ViT-B's global attention at 1024x1024)
        # needs GBs that onnxruntime's arena would then keep for good; the decoder's small buffers
        # are reused on every click.
        options.enable_cpu_mem_arena = part == "decoder"
        try:
            sessions.append(ort.InferenceSession(str(path), options, providers=providers))
        except Exception as err:  # onnxruntime raises its own types for unreadable or invalid models
            raise RuntimeError(f"SAM ONNX {part} {path} is not a readable ONNX model ({one_line(err)[:160]})") from err
    return OnnxMaskPredictor(*sessions, cache_size=cache_size, variant=variant, notices=notices,
                             names=(Path(encoder), Path(decoder)))


class OnnxMaskPredictor(MaskPredictor):
    """`MaskPredictor` (the same clicks, candidates and per-photo embedding cache) on onnxruntime.

    Args:
        encoder: an onnxruntime session of the image encoder.
        decoder: an onnxruntime session of the decoder.
        cache_size, variant, notices: as `MaskPredictor`.
        names: the two files, for error messages.
    """

    def __init__(self, encoder: "onnxruntime.InferenceSession", decoder: "onnxruntime.InferenceSession",
                 cache_size: int = 4, variant: str = "onnx", notices: list[str] | None = None,
                 names: tuple[Path, Path] = (Path("the encoder"), Path("the decoder"))) -> None:
        self._start_cache(cache_size, variant, notices)
        self.encoder, self.decoder = encoder, decoder
        self._check(names)
        (inp,) = encoder.get_inputs()
        self._input_name = inp.name
        self._nchw = len(inp.shape) == 4
        if self._nchw:  # (1, 3, S, S): S is the frame
            self.frame = inp.shape[-1] if isinstance(inp.shape[-1], int) else FRAME
            self._fixed = None
        else:  # (H, W, 3): the graph pads to its frame, 16x its output grid (SAM's encoders' stride)
            grid = encoder.get_outputs()[0].shape[-1]
            self.frame = 16 * grid if isinstance(grid, int) else FRAME
            h, w = inp.shape[:2]  # a fixed H x W is filled as rembg does
            self._fixed = (h, w) if isinstance(h, int) and isinstance(w, int) else None

    def _check(self, names: tuple[Path, Path]) -> None:
        """One clear line when a file is not the part it should be (swapped files included)."""
        encoder_path, decoder_path = names
        decoder_inputs = {i.name for i in self.decoder.get_inputs()}
        decoder_outputs = {o.name for o in self.decoder.get_outputs()}
        encoder_inputs = self.encoder.get_inputs()
        if set(DECODER_INPUTS) <= {i.name for i in encoder_inputs}:
            raise RuntimeError(f"SAM ONNX encoder {encoder_path} is a SAM decoder: swap BACKDROP_SAM_CHECKPOINT "
                               "(the encoder) and BACKDROP_SAM_DECODER")
        missing = [n for n in DECODER_INPUTS if n not in decoder_inputs]
        missing += [n for n in DECODER_OUTPUTS if n not in decoder_outputs]
        if missing:
            raise RuntimeError(f"SAM ONNX decoder {decoder_path} is not SAM's decoder export "
                               f"(it lacks {', '.join(missing)})")
        shapes = [len(i.shape) for i in encoder_inputs]
        if shapes not in ([3], [4]) or (shapes == [3] and encoder_inputs[0].shape[2] != 3) or (
                shapes == [4] and encoder_inputs[0].shape[1] != 3):
            raise RuntimeError(f"SAM ONNX encoder {encoder_path} does not take one image "
                               f"((1, 3, S, S) or (H, W, 3)); its inputs are "
                               f"{[(i.name, i.shape) for i in encoder_inputs]}")

    # -- the encoder ---------------------------------------------------------------------------
    def _encode(self, image: Image.Image) -> _Embedding:
        """The image encoder on one photo: resize (and for NCHW encoders normalise and pad)."""
        width, height = image.size
        if self._fixed is None:
            scale = self.frame / max(height, width)
        else:
            scale = min(self._fixed[0] / height, self._fixed[1] / width)
        # ResizeLongestSide.get_preprocess_shape's rounding, and its resampling (PIL bilinear).
        rh, rw = int(height * scale + 0.5), int(width * scale + 0.5)
        if self._fixed is not None:
            rh, rw = min(rh, self._fixed[0]), min(rw, self._fixed[1])
        resized = np.asarray(image.resize((rw, rh), Image.Resampling.BILINEAR), dtype=np.float32)
        if self._nchw:
            pixels = np.zeros((1, 3, self.frame, self.frame), np.float32)
            pixels[0, :, :rh, :rw] = ((resized - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1)
        elif self._fixed is not None:
            pixels = np.zeros((*self._fixed, 3), np.float32)
            pixels[:rh, :rw] = resized
        else:
            pixels = resized
        (features,) = self.encoder.run(None, {self._input_name: pixels})[:1]
        return _Embedding(np.ascontiguousarray(features, dtype=np.float32), (height, width), (rh, rw))

    # -- the decoder ---------------------------------------------------------------------------
    def predict(self, image: Image.Image, points: list[ClickPoint],
                mask_input: np.ndarray | None = None) -> MaskPrediction:
        """SAM's candidate masks for the clicks, as `MaskPredictor.predict` (same arguments, result
        and errors); `distinct` is 1 when the decoder gives a single mask."""
        check_points(image, points)
        key, emb = self._embedding(image)
        rh, rw = emb.input_size
        # 1. Clicks into the encoder's frame, and the padding point SAM adds without a box.
        coords = np.concatenate([self.frame_coords(points, emb), [[0.0, 0.0]]]).astype(np.float32)
        labels = np.array([p.label for p in points] + [-1], np.float32)
        low = 4 * emb.features.shape[-1]  # the low-resolution mask side: 4x the embedding grid
        if mask_input is None:
            mask, has_mask = np.zeros((1, 1, low, low), np.float32), np.zeros(1, np.float32)
        else:
            mask, has_mask = self._check_mask_input(mask_input, emb).astype(np.float32), np.ones(1, np.float32)
        # 2. The decoder. orig_im_size is the resized frame: its `masks` output (unused) stays small.
        scores, low_res = self.decoder.run(list(DECODER_OUTPUTS), {
            "image_embeddings": emb.features, "point_coords": coords[None], "point_labels": labels[None],
            "mask_input": mask, "has_mask_input": has_mask, "orig_im_size": np.array([rh, rw], np.float32)})
        scores, low_res = scores.reshape(-1).astype(np.float32), low_res[0].astype(np.float32)
        if len(low_res) == 4:  # single-mask output first, then the three multimask candidates
            scores, low_res = scores[1:], low_res[1:]
        if len(low_res) not in (1, 3):
            raise RuntimeError(f"the SAM ONNX decoder gave {len(low_res)} masks; expected 1, 3 or 4")
        distinct = len(low_res)
        order = np.argsort(-scores, kind="stable")  # best first
        scores, low_res = scores[order], low_res[order]
        if distinct == 1:
            scores, low_res = np.repeat(scores, 3), np.repeat(low_res, 3, axis=0)
        # 3. Masks at the photo's size.
        masks = self.photo_logits(low_res, emb) > MASK_THRESHOLD
        return MaskPrediction(masks=masks, scores=scores, low_res_logits=low_res, method="sam", notices=[],
                              distinct=distinct)

    def frame_coords(self, points: list[ClickPoint], emb: _Embedding) -> np.ndarray:
        """The clicks in the encoder's frame: (N, 2) float64, each (X, Y) scaled as the photo was
        (`ResizeLongestSide.apply_coords`: X * rw / W, Y * rh / H)."""
        (height, width), (rh, rw) = emb.original_size, emb.input_size
        return np.array([[p.x * rw / width, p.y * rh / height] for p in points], np.float64)

    def photo_logits(self, low_res: np.ndarray, emb: _Embedding) -> np.ndarray:
        """Low-resolution logits (N, h, w) to the photo, (N, H, W) float32, as `Sam.postprocess_masks`:
        to the square frame, crop the padding, to the photo (bilinear, as F.interpolate with
        align_corners=False; the candidates are resized together, as channels)."""
        import cv2

        (height, width), (rh, rw) = emb.original_size, emb.input_size
        stack = np.ascontiguousarray(low_res.transpose(1, 2, 0))  # (h, w, N)
        logits = cv2.resize(stack, (self.frame, self.frame), interpolation=cv2.INTER_LINEAR)[:rh, :rw]
        if (rh, rw) != (height, width):
            logits = cv2.resize(np.ascontiguousarray(logits), (width, height), interpolation=cv2.INTER_LINEAR)
        logits = logits.reshape(height, width, -1)  # cv2 drops a last axis of 1
        return np.ascontiguousarray(logits.transpose(2, 0, 1))
