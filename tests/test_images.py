"""Photo loading: orientation, modes, refusals, working size and the composite round trip."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from pipelines.images import composite, image_hash, load_image, load_mask, to_working, working_size


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _gradient(w: int = 60, h: int = 40) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1), "RGB")


def test_exif_orientation_6_jpeg_loads_upright(tmp_path):
    # Stored 60 wide x 40 high with a red left column; orientation 6 = rotate 90 clockwise to display.
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :10] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, "JPEG", exif=exif, quality=95)
    image = load_image(path)
    assert image.size == (40, 60)  # displayed: 40 wide, 60 high
    top = np.asarray(image)[:8].reshape(-1, 3).mean(0)  # the red column is now the top rows
    assert top[0] > 200 and top[1] < 60 and top[2] < 60


def test_16_bit_png_scaled_not_clipped():
    values = np.array([[0, 257 * 100, 65535, 65535]] * 8, dtype=np.uint16).repeat(2, 1)
    data = _encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    pixels = np.asarray(load_image(data))
    assert pixels.shape == (8, 8, 3)
    assert list(pixels[0, ::2, 0]) == [0, 100, 255, 255]


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    image = load_image(_encode(cmyk, "JPEG", quality=95))
    assert image.mode == "RGB"
    r, g, b = np.asarray(image).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


def test_rgba_transparent_pixels_become_white():
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 8:, 3] = 255  # right half opaque red, left half fully transparent
    image = np.asarray(load_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert (image[:, :8] == 255).all()
    assert (image[:, 8:] == (255, 0, 0)).all()


def test_palette_gif_and_greyscale():
    palette = _gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image = load_image(_encode(palette, "GIF"))
    assert image.mode == "RGB" and image.size == (60, 40)
    assert np.array_equal(np.asarray(image), np.asarray(palette.convert("RGB")))
    grey = load_image(_encode(Image.new("L", (20, 20), 77), "PNG"))
    assert (np.asarray(grey) == 77).all()
    la = load_image(_encode(Image.new("LA", (20, 20), (77, 255)), "PNG"))
    assert (np.asarray(la) == 77).all()


def test_loads_from_path_bytes_and_pil(tmp_path):
    image = _gradient()
    path = tmp_path / "photo.png"
    image.save(path)
    for source in (path, str(path), path.read_bytes(), image):
        assert np.array_equal(np.asarray(load_image(source)), np.asarray(image))


@pytest.mark.parametrize("data, message", [
    (b"this is a text file, not a photo", "not an image"),
    (b"", "empty"),
])
def test_refuses_non_images(data, message):
    with pytest.raises(ValueError, match=message):
        load_image(data)


def test_refuses_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_image(tmp_path / "nope.png")


def test_refuses_truncated_file():
    data = _encode(_gradient(200, 200), "PNG")
    with pytest.raises(ValueError, match="truncated"):
        load_image(data[: len(data) // 2])


def _png_header_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_refuses_decompression_bomb_quickly():
    bomb = _png_header_bomb(60000, 60000)
    assert len(bomb) < 200
    start = time.perf_counter()
    with pytest.raises(ValueError, match="too large to open safely") as err:
        load_image(bomb, max_pixels=80_000_000)
    assert time.perf_counter() - start < 0.5
    assert "\n" not in str(err.value)
    # Below Pillow's own guard, our cap refuses it from the header, naming the size.
    with pytest.raises(ValueError, match="the image is 12000x12000 \\(144 MP\\); the limit is 80 MP"):
        load_image(_png_header_bomb(12000, 12000), max_pixels=80_000_000)
    assert time.perf_counter() - start < 0.5


def test_refuses_too_small_image():
    with pytest.raises(ValueError, match="at least"):
        load_image(_encode(Image.new("RGB", (4, 4)), "PNG"))


@pytest.mark.parametrize("size, target, expected", [
    ((1024, 1024), 1024 * 1024, (1024, 1024)),
    ((4000, 3000), 1024 * 1024, (1152, 896)),  # large landscape scaled down
    ((300, 200), 1024 * 1024, (1280, 832)),  # small photo scaled up
    ((3000, 4000), 1024 * 1024, (896, 1152)),
    ((2000, 500), 1024 * 1024, (2048, 512)),  # a panorama keeps its aspect
])
def test_working_size(size, target, expected):
    w, h = working_size(*size, target_pixels=target)
    assert (w, h) == expected
    assert w % 64 == 0 and h % 64 == 0
    assert abs(w * h / target - 1) < 0.2
    assert abs((w / h) / (size[0] / size[1]) - 1) < 0.1


def test_composite_round_trip_keeps_original_bytes():
    original = _gradient(301, 207)
    working = to_working(original, target_pixels=128 * 128)
    assert working.size == working_size(301, 207, 128 * 128)
    edited = Image.new("RGB", working.size, (0, 255, 0))
    keep_all = np.zeros((207, 301), np.float32)
    assert composite(original, edited, keep_all).tobytes() == original.tobytes()
    mask = np.zeros((207, 301), np.float32)
    mask[:, 150:] = 1.0
    mask[:, 140:150] = 0.5
    out = np.asarray(composite(original, edited, mask))
    assert np.array_equal(out[:, :140], np.asarray(original)[:, :140])  # kept region exact
    assert (out[:, 150:] == (0, 255, 0)).all()  # repainted region from the edit
    half = (np.asarray(original)[:, 140:150].astype(int) + np.array([0, 255, 0])) / 2
    assert np.abs(out[:, 140:150] - half).max() <= 1  # the seam is a blend


def test_composite_refuses_mismatched_mask():
    with pytest.raises(ValueError, match="does not match"):
        composite(_gradient(), _gradient(), np.zeros((10, 10), np.float32))


def test_load_mask_checks_size_and_reads_white_as_repaint():
    mask_image = Image.new("L", (60, 40), 0)
    mask_image.paste(255, (30, 0, 60, 40))
    mask = load_mask(_encode(mask_image, "PNG"), (60, 40))
    assert mask.dtype == np.float32 and mask.shape == (40, 60)
    assert mask[:, 30:].min() == 1.0 and mask[:, :30].max() == 0.0
    with pytest.raises(ValueError, match="the mask is 60x40 but the photo is 61x40"):
        load_mask(_encode(mask_image, "PNG"), (61, 40))


def test_image_hash_depends_on_pixels_only():
    a, b = _gradient(), _gradient()
    assert image_hash(a) == image_hash(b)
    b.putpixel((0, 0), (1, 2, 3))
    assert image_hash(a) != image_hash(b)
