"""Photo loading, the working size SDXL sees, the way back to the full-size photo, and the colour
guided filter that snaps a mask's edge to the photo's (the matte, the found subject).

Every function here works on upright RGB photos: `load_image` applies EXIF orientation once, so all
coordinates later (clicks, masks) are in the photo as the person sees it.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MIN_SIDE = 8  # smaller than one latent pixel: nothing sensible can be done with it
# What an output file's extension asks for: Pillow's format and its options. PNG is the default and
# the only one that keeps transparency and the edit's parameters; WebP is written lossless.
OUTPUT_FORMATS = {".png": ("PNG", {}), ".jpg": ("JPEG", {"quality": 95}), ".jpeg": ("JPEG", {"quality": 95}),
                  ".webp": ("WEBP", {"lossless": True})}

ImageSource = str | Path | bytes | Image.Image


def load_image(source: ImageSource, max_pixels: int = 80_000_000) -> Image.Image:
    """Load a photo as an upright 8-bit RGB image.

    Args:
        source: a file path, the file's bytes, or a PIL image.
        max_pixels: refuse images with more pixels than this. Checked from the header alone, so a
            decompression bomb (a tiny file claiming 60000x60000) is refused without decoding.

    Returns:
        An RGB `PIL.Image` with EXIF orientation applied (EXIF then dropped).

    Raises:
        ValueError: one line saying why: missing, empty, not an image, truncated, too large.
    """
    if isinstance(source, Image.Image):
        image = source
        _check_size(image.size, max_pixels)
    else:
        data = _read_bytes(source)
        with warnings.catch_warnings():
            # Pillow warns past its own limit; our cap (checked from the header) decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _open_checked(data, max_pixels)
    image = ImageOps.exif_transpose(image)
    return _to_rgb(image)


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Decode `data`, refusing oversized images from the header, before any pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except Image.DecompressionBombError as err:
        # Pillow's own guard (left on for the whole process) fires first for headers past twice
        # its limit; our cap below covers everything smaller.
        raise ValueError(f"the image is too large to open safely (more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP; "
                         f"the limit is {max_pixels / 1e6:.0f} MP, BACKDROP_MAX_IMAGE_PIXELS)") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError("the file is not an image Backdrop can read (PNG, JPEG, WebP, ...)") from err
    _check_size(image.size, max_pixels)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"the image file is damaged or truncated ({exc})") from exc
    return image


def _read_bytes(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
        data = path.read_bytes()
    if not data:
        raise ValueError("the file is empty")
    return data


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ValueError(f"the image is {width}x{height}; each side must be at least {MIN_SIDE} pixels")
    if width * height > max_pixels:
        raise ValueError(
            f"the image is {width}x{height} ({width * height / 1e6:.0f} MP); "
            f"the limit is {max_pixels / 1e6:.0f} MP (BACKDROP_MAX_IMAGE_PIXELS)")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB. Transparent pixels become white; 16/32-bit grey is scaled, not clipped."""
    mode = image.mode
    if mode == "RGB":
        return image.copy() if image.info or getattr(image, "is_animated", False) else image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        # 16-bit files hold 0..65535; an "I"/"F" image may hold 8-bit values already.
        peak = 65535.0 if values.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        grey = np.clip(np.rint(values / peak * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.getchannel("A"))
        return white
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def output_format(path: str | Path) -> tuple[str, dict]:
    """(Pillow format, save options) for an output file name; no extension means PNG.

    Raises:
        ValueError: an extension Backdrop does not write (one line).
    """
    suffix = Path(path).suffix.lower() or ".png"
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"{Path(path).name}: Backdrop writes {', '.join(OUTPUT_FORMATS)} files, not {suffix}")
    return OUTPUT_FORMATS[suffix]


def image_hash(image: Image.Image) -> str:
    """A content hash of an image's pixels (size and mode included): a cache key per photo."""
    digest = hashlib.sha256(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def working_size(width: int, height: int, target_pixels: int = 1024 * 1024,
                 multiple: int = 64) -> tuple[int, int]:
    """The size SDXL works at: about `target_pixels`, aspect kept, sides multiples of `multiple`.

    Small photos are scaled up and large ones down, so SDXL always sees about the area it was
    trained on (1024x1024 for the base model).
    """
    scale = math.sqrt(target_pixels / (width * height))
    w = max(multiple, round(width * scale / multiple) * multiple)
    h = max(multiple, round(height * scale / multiple) * multiple)
    return w, h


def to_working(image: Image.Image, target_pixels: int = 1024 * 1024) -> Image.Image:
    """Resize a photo to its working size (Lanczos)."""
    size = working_size(*image.size, target_pixels=target_pixels)
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float mask (H, W) in [0, 1] to `size` = (width, height), bilinear, values kept in [0, 1]."""
    if mask.shape[::-1] == tuple(size):
        return mask.astype(np.float32, copy=False)
    resized = Image.fromarray(mask.astype(np.float32), "F").resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def load_mask(source: ImageSource, size: tuple[int, int]) -> np.ndarray:
    """Load a mask image (white = repaint) for a photo of `size` = (width, height).

    EXIF orientation is applied like for photos, so the mask is in the displayed orientation.

    Returns:
        float32 (H, W) in [0, 1], 1 = repaint.

    Raises:
        ValueError: not an image, or its size differs from the photo's.
    """
    image = load_image(source)
    if image.size != tuple(size):
        raise ValueError(
            f"the mask is {image.size[0]}x{image.size[1]} but the photo is {size[0]}x{size[1]}")
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def composite(original: Image.Image, edited: Image.Image, mask: np.ndarray) -> Image.Image:
    """Put an edited working-size image back onto the full-size original through a mask.

    Args:
        original: the full-size RGB photo.
        edited: the RGB result at any size (usually the working size); it is resized to the photo.
        mask: float32 (H, W) in [0, 1] at the photo's size, 1 = take the edited pixel.

    Returns:
        The full-size RGB composite. Where the mask is 0 the pixels are the original's, byte for byte.
    """
    if mask.shape != (original.height, original.width):
        raise ValueError(f"mask shape {mask.shape} does not match the photo ({original.height}, {original.width})")
    if edited.size != original.size:
        edited = edited.resize(original.size, Image.Resampling.LANCZOS)
    base = np.asarray(original.convert("RGB"), dtype=np.float32)
    new = np.asarray(edited.convert("RGB"), dtype=np.float32)
    weight = np.clip(mask.astype(np.float32), 0.0, 1.0)[..., None]
    mixed = np.rint(base + (new - base) * weight)  # weight 0 gives base exactly
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8), "RGB")


def _box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the (2 radius + 1)^2 window around each pixel (borders reflected)."""
    import cv2

    return cv2.boxFilter(x, -1, (2 * radius + 1, 2 * radius + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, p: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """The colour guided filter (He, Sun & Tang 2010, eqs. 14-16): `p` filtered so that in every
    window it is a linear function of the guide's colour, q = a^T I + b.

    Args:
        guide: float32 (H, W, 3) in [0, 1], the photo.
        p: float32 (H, W), the input (a binary mask: the matte's cut, the found subject).
        radius: the window's radius in pixels.
        eps: the fit's regulariser (larger: smoother, less edge-following).

    Returns:
        float32 (H, W), not clipped.
    """
    mean_i = _box_mean(guide, radius)
    mean_p = _box_mean(p, radius)
    cov = _box_mean(guide * p[..., None], radius) - mean_i * mean_p[..., None]  # cov(I, p), 3 channels

    def var(j: int, k: int) -> np.ndarray:  # an entry of the window's colour covariance Sigma + eps U
        entry = _box_mean(guide[..., j] * guide[..., k], radius) - mean_i[..., j] * mean_i[..., k]
        return entry + eps if j == k else entry

    rr, rg, rb, gg, gb, bb = var(0, 0), var(0, 1), var(0, 2), var(1, 1), var(1, 2), var(2, 2)
    # a = (Sigma + eps U)^-1 cov(I, p) (eq. 14), the symmetric 3x3 inverse by cofactors.
    inv_rr, inv_rg, inv_rb = gg * bb - gb * gb, gb * rb - rg * bb, rg * gb - gg * rb
    inv_gg, inv_gb, inv_bb = rr * bb - rb * rb, rb * rg - rr * gb, rr * gg - rg * rg
    det = rr * inv_rr + rg * inv_rg + rb * inv_rb
    c0, c1, c2 = cov[..., 0], cov[..., 1], cov[..., 2]
    a0 = (inv_rr * c0 + inv_rg * c1 + inv_rb * c2) / det
    a1 = (inv_rg * c0 + inv_gg * c1 + inv_gb * c2) / det
    a2 = (inv_rb * c0 + inv_gb * c1 + inv_bb * c2) / det
    b = mean_p - a0 * mean_i[..., 0] - a1 * mean_i[..., 1] - a2 * mean_i[..., 2]  # eq. 15
    # eq. 16: each pixel averages the fits of every window that holds it.
    return (_box_mean(a0, radius) * guide[..., 0] + _box_mean(a1, radius) * guide[..., 1]
            + _box_mean(a2, radius) * guide[..., 2] + _box_mean(b, radius))
