"""Backgrounds of every kind and the canvas: exact pixels, no fringe, no model for plain kinds.

The scene is the one of test_compositing: a grey textured subject whose fuzzy edge is mixed with a
saturated magenta wall by the matting equation, so any magenta left in the edge is the old
background's fringe. Plain kinds run through `run_edit` with the subject given (no SAM) and with
settings whose SDXL model and Ollama server do not exist.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import make_photo, run_cli
from PIL import Image, ImageFilter
from scipy.ndimage import gaussian_filter
from test_compositing import NEW_BACKGROUND, _magenta_excess, _scene, fuzzy_edge

from pipelines import downloads, images, prompting
from pipelines.composite import backgrounds, canvas, compositing
from pipelines.diffusion import sdxl_models
from pipelines.entry import batch
from pipelines.masks import masking
from pipelines.editing import run_edit, validate_request
from pipelines.outputs import read_parameters
from pipelines.settings import Settings
from pipelines.types import ClickPoint, EditRequest

GREEN = "#{:02x}{:02x}{:02x}".format(*NEW_BACKGROUND)


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Settings:
    """Settings with no SDXL model and no Ollama; loading either (or a tokenizer) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a plain background loaded a model or asked Ollama")

    monkeypatch.setattr(prompting, "load_tokenizers", refuse)
    monkeypatch.setattr(prompting, "make_client", refuse)
    monkeypatch.setattr(sdxl_models, "load_sdxl_from_settings", refuse)
    monkeypatch.setattr(downloads, "sdxl_folder", refuse)
    return Settings(sdxl_model=str(tmp_path / "nowhere"), ollama_host="http://127.0.0.1:9",
                    output_dir=tmp_path / "outputs", device="cpu")


@pytest.fixture(scope="module")
def scene():
    truth = fuzzy_edge()
    photo, _ = _scene(truth, seed=4)
    return photo, truth


def _green_picture(tmp_path, size=(160, 120)):
    path = tmp_path / "green.png"
    Image.new("RGB", size, NEW_BACKGROUND).save(path)
    return path


def _far(truth: np.ndarray, margin: int = 20) -> np.ndarray:
    """Pixels more than `margin` pixels from any part of the subject."""
    import cv2

    return cv2.distanceTransform((truth == 0).astype(np.uint8), cv2.DIST_L2, 5) > margin


# --- every kind: exact core, exact far background, no fringe ----------------------------------

@pytest.mark.parametrize("kind", ["color", "picture", "transparent", "blur"])
def test_each_kind_keeps_the_core_exact_and_the_far_background_its_own(kind, scene, offline, tmp_path):
    photo, truth = scene
    value = {"color": GREEN, "picture": str(_green_picture(tmp_path)), "transparent": "transparent",
             "blur": "blur:6"}[kind]
    result = run_edit(EditRequest(image=photo, subject=truth >= 0.5, background=value), offline)
    [out] = result.images
    [path] = result.paths
    saved = Image.open(path)
    assert saved.mode == ("RGBA" if kind == "transparent" else "RGB")
    assert np.array_equal(np.asarray(saved), np.asarray(out))
    rgb = np.asarray(out)[..., :3]

    solid = result.mask == 0  # the matte's solid subject
    assert solid.sum() > 3000
    assert np.array_equal(rgb[solid], np.asarray(photo)[solid])  # byte for byte
    far = _far(truth)
    assert far.sum() > 5000
    if kind == "transparent":
        alpha = np.asarray(out)[..., 3]
        assert (alpha[solid] == 255).all() and (alpha[far] == 0).all() and (rgb[far] == 0).all()
    elif kind == "blur":
        # Far out, the old wall blurred: magenta, exactly the masked blur of the photo.
        weight = backgrounds.blur_weight(compositing.edge_layer(photo, truth >= 0.5, "matte", feather=4),
                                         canvas.whole_photo(photo.size))
        assert np.array_equal(rgb[far], backgrounds.masked_blur(np.asarray(photo), weight, 6.0)[far])
    else:
        assert (rgb[far] == NEW_BACKGROUND).all()

    params = read_parameters(path)
    assert params["Background"] == result.background and params["Canvas"] == "none"
    assert "Seed" not in params and "Steps" not in params and params["Prompt"] == ""


@pytest.mark.parametrize("kind", ["color", "picture", "transparent"])
def test_a_soft_edge_keeps_no_fringe_of_the_old_background(kind, scene, offline, tmp_path):
    photo, truth = scene
    value = {"color": GREEN, "picture": str(_green_picture(tmp_path)), "transparent": "transparent"}[kind]
    out = run_edit(EditRequest(image=photo, subject=truth >= 0.5, background=value), offline, save=False).images[0]
    if kind == "transparent":  # the cutout laid over the same green
        out = Image.alpha_composite(Image.new("RGBA", out.size, NEW_BACKGROUND + (255,)), out).convert("RGB")
    edge = (truth > 0) & (truth < 1)
    fringe = _magenta_excess(out, edge)
    green = Image.new("RGB", photo.size, NEW_BACKGROUND)
    cut = _magenta_excess(images.composite(photo, green, masking.refine_mask(truth >= 0.5)), edge)
    assert cut > 20  # the binary cut leaves the magenta ring
    assert fringe < cut / 3, (fringe, cut)


@pytest.mark.parametrize("edge", ["matte", "hard", "feather"])
def test_blur_keeps_the_subjects_colour_out_of_the_blurred_background(edge, offline):
    # A red disc on a blue, noisy wall: a plain blur would pour red around the disc.
    rng = np.random.default_rng(1)
    wall = np.clip(np.array([30, 60, 200]) + rng.integers(-20, 21, (120, 160, 3)), 0, 255)
    yy, xx = np.mgrid[:120, :160]
    disc = (xx - 80) ** 2 + (yy - 60) ** 2 <= 30 ** 2
    wall[disc] = (230, 20, 20)
    photo = Image.fromarray(wall.astype(np.uint8), "RGB")
    result = run_edit(EditRequest(image=photo, subject=disc, background="blur:8", edge=edge), offline, save=False)
    out = np.asarray(result.images[0]).astype(int)

    distance = np.hypot(xx - 80, yy - 60)
    ring = (distance > 36) & (distance < 44)  # just outside the edge band: pure new background
    naive = np.asarray(photo.filter(ImageFilter.GaussianBlur(8))).astype(int)
    assert naive[ring][:, 0].mean() > 45  # what an unmasked blur leaves there
    assert abs(out[ring][:, 0].mean() - 30) < 2 and out[ring][:, 0].max() < 40
    far = distance > 50
    assert out[far].std(axis=0).max() < 4 < wall[far].std(axis=0).min()  # and it is blurred
    kept = result.mask == 0
    assert np.array_equal(out[kept], wall[kept])


def test_masked_blur_is_the_normalised_convolution():
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:150, :240]
    image = np.stack([xx, yy, (xx + yy) // 2], -1).astype(np.uint8) + rng.integers(0, 10, (150, 240, 3)).astype(np.uint8)
    weight = ((xx - 120) ** 2 + (yy - 75) ** 2 > 40 ** 2).astype(np.float32)
    for radius, tolerance in ((2.0, 0.51), (24.0, 2.0)):  # direct, then on the shrunk copy
        got = backgrounds.masked_blur(image, weight, radius).astype(float)
        numerator = np.stack([gaussian_filter(image[..., c] * weight.astype(float), radius, mode="reflect")
                              for c in range(3)], -1)
        denominator = gaussian_filter(weight.astype(float), radius, mode="reflect")
        defined = denominator > backgrounds.MIN_WEIGHT  # deeper in the hole: the wider kernel's (below)
        assert defined.mean() > 0.9
        reference = numerator[defined] / denominator[defined][:, None]
        assert np.abs(got[defined] - reference).max() <= tolerance, radius
    # Deep inside a large hole the kernel finds no weight: a wider one fills it, never with hole pixels.
    hole = np.zeros((100, 100, 3), np.uint8)
    hole[:, :5] = 200
    weight = np.zeros((100, 100), np.float32)
    weight[:, :5] = 1
    assert (backgrounds.masked_blur(hole, weight, 2.0) == 200).all()


def test_picture_covers_the_frame_centred_without_distortion(scene, offline, tmp_path):
    photo, truth = scene
    rng = np.random.default_rng(3)
    far = _far(truth)
    for shape, crop in (((160, 400), np.s_[:, 120:280]), ((400, 160), np.s_[120:280, :])):
        pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        path = tmp_path / f"picture-{shape[0]}.png"
        Image.fromarray(pixels).save(path)
        out = run_edit(EditRequest(image=photo, subject=truth >= 0.5, background=str(path)), offline,
                       save=False).images[0]
        assert np.array_equal(np.asarray(out)[far], pixels[crop][far])
    # Larger and of another shape: scaled by max(160/800, 160/300) to 427x160, centre kept.
    big = np.zeros((300, 800, 3), np.uint8)
    big[:, 400:] = 255  # left half black, right half white: the seam must land mid-frame
    Image.fromarray(big).save(tmp_path / "big.png")
    out = np.asarray(run_edit(EditRequest(image=photo, subject=truth >= 0.5, background=str(tmp_path / "big.png")),
                              offline, save=False).images[0])
    assert (out[5, :75] == 0).all() and (out[5, 85:] == 255).all()


# --- the canvas ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, place, expected", [
    ("16:9", "center", (214, 120, 27, 0)),
    ("9:16", "top", (160, 285, 0, 0)),
    ("9:16", "bottom", (160, 285, 0, 165)),
    ("1:1", "center", (160, 160, 0, 20)),
    ("4:3", "center", (160, 120, 0, 0)),  # already that shape: no larger frame
    ("300x200", "left", (300, 200, 0, 40)),
    ("300x200", "right", (300, 200, 140, 40)),
    ("300 x 200", "center", (300, 200, 70, 40)),
])
def test_canvas_size_and_place(text, place, expected):
    frame = canvas.parse_canvas(text, (160, 120), place)
    assert (frame.width, frame.height, frame.left, frame.top) == expected


@pytest.mark.parametrize("text, place, message", [
    ("100x100", "center", "canvas 100x100 cannot hold the 160x120 photo; the smallest that can is 160x120"),
    ("1920x100", "center", "the smallest that can is 1920x120"),
    ("0x100", "center", "canvas '0x100': both sides must be positive"),
    ("-300x200", "center", "both sides must be positive"),
    ("0:9", "center", "both sides of the ratio must be positive"),
    ("wide", "center", "canvas 'wide' is not WxH"),
    ("300x200", "middle", "unknown place 'middle'"),
    ("100000x100000", "center", "is over the limit"),
])
def test_bad_canvas_is_refused_in_one_line(text, place, message):
    with pytest.raises(ValueError, match=message) as err:
        canvas.parse_canvas(text, (160, 120), place, max_pixels=80_000_000)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("place", ["center", "left", "right", "top", "bottom"])
def test_canvas_puts_the_photo_where_place_says(place, scene, offline):
    photo, truth = scene
    for value in ("white", "transparent", "blur"):
        # The feather edge: placing is the same for every edge, and it skips the matte's solve.
        result = run_edit(EditRequest(image=photo, subject=truth >= 0.5, background=value, canvas="300x240",
                                      place=place, edge="feather"), offline, save=False)
        out = np.asarray(result.images[0])
        frame = canvas.parse_canvas("300x240", photo.size, place)
        assert out.shape[:2] == (240, 300) and result.canvas["left"] == frame.left
        box = np.s_[frame.top:frame.top + photo.height, frame.left:frame.left + photo.width]
        solid = result.mask[box] == 0
        assert solid.sum() > 3000
        assert np.array_equal(out[box][..., :3][solid], np.asarray(photo)[solid])
        outside = np.ones((240, 300), bool)
        outside[box] = False
        assert (result.mask[outside] == 1).all()  # the new area is all repainted
        if value == "white":
            assert (out[outside] == 255).all()
        elif value == "transparent":
            assert (out[outside][:, 3] == 0).all()
        else:  # the reflected wall, blurred: magenta, never the grey subject
            assert (out[outside][:, 0] > 200).all() and (out[outside][:, 1] < 60).all()


def test_clicks_are_in_photo_coordinates_on_a_canvas(tiny_settings):
    photo = make_photo(160, 120)
    request = EditRequest(image=photo, points=[ClickPoint(80, 60)], background="black", edge="hard")
    plain = run_edit(request, tiny_settings, save=False)
    placed = run_edit(dataclasses.replace(request, canvas="16:9", place="right"), tiny_settings, save=False)
    assert placed.mask.shape == (120, 214)
    assert np.array_equal(placed.mask[:, 54:], plain.mask) and (placed.mask[:, :54] == 1).all()
    assert np.array_equal(np.asarray(placed.images[0])[:, 54:], np.asarray(plain.images[0]))


def test_generate_outpaints_the_new_area_and_keeps_the_photo_exact_at_its_offset(tiny_settings):
    photo = make_photo(160, 120)
    mask = np.zeros((120, 160), np.float32)
    mask[:, 120:] = 1.0  # repaint a strip of the photo, and the canvas's new area
    request = EditRequest(image=photo, mask=mask, prompt="a beach", edge="hard", num_inference_steps=2,
                          strength=0.6, seed=5, canvas="320x120", place="left")
    result = run_edit(request, tiny_settings)
    out = np.asarray(result.images[0])
    assert out.shape == (120, 320, 3)
    assert np.array_equal(out[:, :120], np.asarray(photo)[:, :120])  # kept pixels, exact, at offset 0
    assert np.abs(out[:, 200:].astype(int) - 128).mean() > 1  # the new area got painted
    params = read_parameters(result.paths[0])
    assert params["Background"] == "generate" and params["Canvas"] == "320x120, photo at 0,0 (left)"
    assert params["Original size"] == "160x120" and params["Seed"] == "5"

    # Only outpainting: a mask that repaints nothing of the photo keeps all of it.
    whole = run_edit(dataclasses.replace(request, mask=np.zeros_like(mask), canvas="16:9", place="center"),
                     tiny_settings, save=False)
    assert np.array_equal(np.asarray(whole.images[0])[:, 27:187], np.asarray(photo))


# --- bad values, no model, the command line, batches ---------------------------------------------

@pytest.mark.parametrize("value, message", [
    ("#12345", "unknown colour '#12345'"),
    ("whte", "unknown background 'whte': not generate, transparent, blur"),
    ("missing.jpg", "background picture missing.jpg: no such file"),
    ("blur:0", "blur radius must be above 0"),
    ("blur:-3", "blur radius must be above 0"),
    ("blur:soft", "blur radius 'soft' in 'blur:soft' is not a number"),
    ("#ff000080", "has an alpha; use 'transparent'"),
])
def test_bad_background_is_refused_in_one_line(value, message, offline, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    photo = make_photo()
    with pytest.raises(ValueError, match=message) as err:
        validate_request(EditRequest(image=photo, points=[ClickPoint(80, 60)], background=value), offline)
    assert "\n" not in str(err.value)


def test_unreadable_picture_is_refused(offline, tmp_path):
    bad = tmp_path / "brand.png"
    bad.write_text("not a picture")
    with pytest.raises(ValueError, match=f"background picture {bad}: the file is not an image"):
        validate_request(EditRequest(image=make_photo(), points=[ClickPoint(80, 60)], background=str(bad)), offline)


def test_colours_by_name_and_hex():
    assert backgrounds.parse_background("white").color == (255, 255, 255)
    assert backgrounds.parse_background("Black").color == (0, 0, 0)
    assert backgrounds.parse_background("dodgerblue").describe() == "color #1e90ff"
    assert backgrounds.parse_background("#1E90FF").color == (30, 144, 255)
    assert backgrounds.parse_background("blur").describe() == "blur auto"
    assert backgrounds.parse_background(" blur:12.5 ").radius == 12.5


def test_command_line_plain_background_without_any_model(tiny_env, tmp_path):
    env = {**tiny_env, "BACKDROP_SDXL_MODEL": str(tmp_path / "nowhere"), "OLLAMA_HOST": "http://127.0.0.1:9"}
    photo = tmp_path / "photo.png"
    make_photo(160, 120).save(photo)
    mask = np.full((120, 160), 255, np.uint8)
    mask[30:90, 50:110] = 0
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "cut.png"
    done = run_cli(["edit", str(photo), "--mask", str(tmp_path / "mask.png"), "--background", "transparent",
                 "--canvas", "16:9", "--place", "left", "--edge", "feather", "--out", str(out), "--json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["background"] == "transparent" and record["prompt"] == "" and record["outputs"] == [str(out)]
    assert record["canvas"] == {"width": 214, "height": 120, "left": 0, "top": 0, "photo_width": 160,
                                "photo_height": 120, "place": "left"}
    saved = Image.open(out)
    assert saved.mode == "RGBA" and saved.size == (214, 120)
    assert (np.asarray(saved)[:, 160:, 3] == 0).all()
    assert read_parameters(out)["Canvas"] == "214x120, photo at 0,0 (left)"

    for args, message in ((["--canvas", "0x10"], "canvas '0x10': both sides must be positive"),
                          (["--canvas", "100x100"], "cannot hold the 160x120 photo"),
                          (["--background", "nope"], "unknown background 'nope'"),
                          (["--place", "middle"], "--place")):
        bad = run_cli(["edit", str(photo), "--mask", str(tmp_path / "mask.png"), "--background", "white", *args],
                   env, tmp_path)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and message in bad.stderr, bad.stderr


def test_batch_rows_take_backgrounds_and_canvases(tmp_path):
    (tmp_path / "shoot").mkdir()
    make_photo().save(tmp_path / "shoot" / "a.png")
    _green_picture(tmp_path / "shoot")
    rows = [{"photo": "a.png", "background": "green.png", "canvas": "1:1", "place": "top"},
            {"photo": "a.png", "background": "white"}]
    defaults = {"background": "generate", "canvas": None, "place": "center"}
    first = batch.make_tasks(rows, defaults, tmp_path / "shoot", tmp_path / "out", Settings())
    assert first[0].error is None and first[0].fields["background"] == str(tmp_path / "shoot" / "green.png")
    assert first[0].fields["canvas"] == "1:1" and first[0].fields["place"] == "top"
    assert first[1].fields == {"background": "white", "place": "center"}
    Image.new("RGB", (8, 8), "red").save(tmp_path / "shoot" / "green.png")  # another picture, same name
    again = batch.make_tasks(rows, defaults, tmp_path / "shoot", tmp_path / "out", Settings())
    assert again[0].key != first[0].key and again[1].key == first[1].key
    missing = batch.make_tasks([{"photo": "a.png", "background": "gone.jpg"}], defaults, tmp_path / "shoot",
                               tmp_path / "out", Settings())
    assert "gone.jpg" in missing[0].error
