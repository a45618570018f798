"""The real page in headless Chromium: `python app.py` with tiny models and the fake Ollama.

A person uploads a photo, clicks the subject, sees the overlay change, types a keyword, moves the
safety slider to Hyp-Strong, generates, sees the result and downloads it. Then two people at once.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import make_photo
from PIL import Image

from pipelines.outputs import read_parameters

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and not __import__("os").environ.get("CI"),
                                reason="Debian's chromium is not installed (apt-get install chromium)")


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield browser
        browser.close()


# Every page's animation frames come late, as on a busy machine: Gradio applies some updates a
# frame after rendering, and a test that only passes on an idle machine hides such races.
SLOW_FRAMES = """(() => { const raf = window.requestAnimationFrame.bind(window);
  window.requestAnimationFrame = (cb) => raf((t) => setTimeout(() => cb(t), 400)); })()"""


def _new_page(browser):
    """A page in its own browser context, so its own Gradio session."""
    context = browser.new_context()
    context.add_init_script(SLOW_FRAMES)
    return context.new_page()


def _photo_src(page) -> str:
    return page.locator("#photo img").first.get_attribute("src") or ""


def _wait_photo_changed(page, before, timeout=60_000):
    page.wait_for_function("(b) => { const i = document.querySelector('#photo img'); return i && i.src !== b; }",
                           arg=before, timeout=timeout)


def _set_slider(page, selector, value):
    """Move a Gradio slider and wait until its number box shows the value."""
    page.locator(f"{selector} input[type=range]").fill(value)
    page.wait_for_function(f"() => document.querySelector('{selector} input[type=number]').value === '{value}'",
                           timeout=30_000)


def _open(page, section):
    """Open one of the page's sections (shut at load) by its id, unless it is open."""
    page.wait_for_function("() => document.body.dataset.sectionsShut === 'yes'", timeout=60_000)  # at load
    header = page.locator(f"#{section} > button.label-wrap")
    if "open" not in (header.get_attribute("class") or ""):
        header.click()
    page.wait_for_function(f"() => document.querySelector('#{section} > button.label-wrap.open')", timeout=30_000)


def _edit(page, url, photo_path, tmp_path, name):
    """Upload, click, keyword, Hyp-Strong, 3 steps; returns once generation was started."""
    if url is not None:
        page.goto(url)
    _upload_and_click(page, photo_path, tmp_path, name)
    page.locator("#keyword textarea").fill("forest")
    _set_slider(page, "#safety", "3")
    page.get_by_text("Hyp-Strong: warm-up").wait_for(timeout=10_000)
    _open(page, "advanced")
    _set_slider(page, "#steps", "3")
    page.locator("#generate").click()


def _upload_and_click(page, photo_path, tmp_path, name):
    """Upload the photo and click its middle (the disk); returns once the preview shows the mask."""
    _open(page, "mask-tools")  # where SAM's candidates show
    page.locator("#photo input[type=file]").set_input_files(str(photo_path))
    page.get_by_text("Click the subject.").wait_for(timeout=60_000)  # the upload was processed
    before = _photo_src(page)
    candidates = page.get_by_text("1 (score")
    for attempt in range(2):
        # A click that lands while Gradio is still re-rendering the just-uploaded image is dropped by
        # the browser (seen only on a loaded machine); a person clicks again, and so does this test.
        page.locator("#photo img").first.scroll_into_view_if_needed()  # opening Mask tools may have scrolled
        box = page.locator("#photo img").first.bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # the disk (the subject)
        try:
            candidates.wait_for(timeout=20_000 if attempt == 0 else 60_000)  # SAM's three candidates
            break
        except Exception:
            if attempt == 1:
                page.screenshot(path=str(tmp_path / f"{name}-click.png"), full_page=True)
                raise
    _wait_photo_changed(page, before, timeout=30_000)  # and the preview now shows the mask and the point


def _download(page, tmp_path, name) -> Path:
    page.locator("#result img").first.wait_for(timeout=180_000)
    link = page.locator("#downloads a").first
    link.wait_for(timeout=30_000)
    with page.expect_download() as download:
        link.click()
    path = tmp_path / f"{name}.png"
    download.value.save_as(path)
    return path


def test_one_edit_in_the_browser(app_url, browser, tmp_path, fake_ollama):
    photo = tmp_path / "photo.png"
    make_photo(160, 120).save(photo)
    bogus = tmp_path / "notes.png"
    bogus.write_text("not a photo")
    page = _new_page(browser)
    page.goto(app_url)
    # The download box is an output: no upload zone (a file input) in it.
    page.locator("#downloads").wait_for()
    assert page.locator("#downloads input[type=file]").count() == 0
    # A non-image gets our one-line message, and the page keeps working without a reload.
    page.locator("#photo input[type=file]").set_input_files(str(bogus))
    page.get_by_text("the file is not an image Backdrop can read (PNG, JPEG, WebP, ...)").wait_for(timeout=30_000)
    _edit(page, None, photo, tmp_path, "one")
    saved = _download(page, tmp_path, "one")
    assert Image.open(saved).size == (160, 120)
    params = read_parameters(saved)
    assert params["Safety"].startswith("Hyp-Strong") and params["Steps"] == "3"
    assert "forest" in params["Prompt"] or params["Prompt"] == "misty pine forest at dawn, soft light, award winning photograph"
    mood = page.get_by_label("Mood").first
    page.wait_for_function("(e) => e.value !== ''", arg=mood.element_handle(), timeout=10_000)
    assert mood.input_value() == "Stylish, modern, contemporary"
    assert any(b["model"] == "llava" and b["messages"][-1].get("images") for b in fake_ollama.bodies("/api/chat"))


def test_two_sessions_at_once_get_their_own_results(app_url, browser, tmp_path, tiny_settings):
    photos = {"wide": (160, 120, (200, 40, 40)), "tall": (120, 160, (40, 40, 200))}
    pages = {}
    for name, (w, h, color) in photos.items():
        path = tmp_path / f"{name}.png"
        make_photo(w, h, seed=len(name), color=color).save(path)
        pages[name] = _new_page(browser)
        _edit(pages[name], app_url, path, tmp_path, name)
    for name, (w, h, color) in photos.items():
        saved = _download(pages[name], tmp_path, f"result-{name}")
        assert Image.open(saved).size == (w, h)
        assert read_parameters(saved)["Original size"] == f"{w}x{h}"

    # Each result is served to its own session only: the page links an unguessable copy, and the
    # output folder itself is not served, even to a client that knows a saved file's path.
    outputs = sorted(tiny_settings.output_dir.glob("*.png"))
    assert len(outputs) == 2
    stranger = _new_page(browser)
    for path in outputs:
        refused = stranger.request.get(f"{app_url}/gradio_api/file={path}")
        assert refused.status == 403, path
    for name, page in pages.items():
        href = page.locator("#downloads a").first.get_attribute("href")
        assert str(tiny_settings.output_dir) not in href
        own = page.request.get(href if href.startswith("http") else app_url + href)
        assert own.status == 200
        assert own.body() == (tmp_path / f"result-{name}.png").read_bytes()
        assert own.body() in [p.read_bytes() for p in outputs]  # the saved file, byte for byte


# --- the brush, masks in and out (issue 18.4-18.5) -----------------------------------------------

def _on_photo(page, x, y):
    """Where photo pixel (x, y) is on the screen (the preview is the photo here, scaled to fit)."""
    return page.evaluate("""([x, y]) => {
        const img = document.querySelector('#photo img'), r = img.getBoundingClientRect();
        const fit = Math.max(img.naturalWidth / r.width, img.naturalHeight / r.height);
        const s = getComputedStyle(img).objectFit === 'scale-down' ? Math.max(1, fit) : fit;
        return [r.left + (r.width - img.naturalWidth / s) / 2 + (x + 0.5) / s,
                r.top + (r.height - img.naturalHeight / s) / 2 + (y + 0.5) / s]; }""", [x, y])


def _download_mask(page, tmp_path, name, previous=""):
    """Press "Mask as PNG" and download the link once it differs from `previous`; -> (pixels, href)."""
    page.locator("#mask-download").click()
    page.wait_for_function("(b) => { const a = document.querySelector('#mask-file a'); return a && a.href !== b; }",
                           arg=previous, timeout=60_000)
    link = page.locator("#mask-file a").first
    href = link.evaluate("(a) => a.href")
    with page.expect_download() as download:
        link.click()
    path = tmp_path / f"{name}.png"
    download.value.save_as(path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "L" and image.size == (160, 120)
        return np.asarray(image), href


def test_brush_strokes_edit_the_mask_and_masks_go_in_and_out(app_url, browser, tmp_path):
    photo = tmp_path / "photo.png"
    make_photo(160, 120).save(photo)
    page = _new_page(browser)
    page.goto(app_url)
    _upload_and_click(page, photo, tmp_path, "brush")
    clicked, href = _download_mask(page, tmp_path, "clicked")
    assert 0 < (clicked == 255).mean() < 1 and set(np.unique(clicked)) == {0, 255}  # white = repaint

    # Picking another candidate shows and uses its mask; picking the first again brings it back.
    for label, same in (("2 (score", False), ("1 (score", True)):
        before = _photo_src(page)
        page.get_by_text(label).click()
        _wait_photo_changed(page, before)
        picked, href = _download_mask(page, tmp_path, f"picked-{label[0]}", href)
        assert np.array_equal(picked, clicked) == same

    # Paint along row 30 from x 90 to 150, brush 10 preview pixels wide: with "add to subject" where
    # the click's mask mostly repaints there (the tiny SAM's mask is arbitrary), else "remove".
    row = clicked[30, 90:151]
    add = (row == 255).mean() >= 0.5
    page.locator("#brush").get_by_text("add to subject" if add else "remove from subject").click()
    _set_slider(page, "#brush-size", "10")
    before = _photo_src(page)
    page.locator("#photo img").first.scroll_into_view_if_needed()  # picking the brush scrolled down
    page.mouse.move(*_on_photo(page, 90, 30))
    page.mouse.down()
    for x in range(94, 151, 4):
        page.mouse.move(*_on_photo(page, x, 30))
    page.mouse.up()
    _wait_photo_changed(page, before)
    painted, href = _download_mask(page, tmp_path, "painted", href)
    assert (painted[26:35, 90:151] == (0 if add else 255)).all()  # the stroke's path, as painted
    changed = np.argwhere(painted != clicked)
    assert changed[:, 0].min() >= 24 and changed[:, 0].max() <= 36  # within the brush's reach of row 30
    assert changed[:, 1].min() >= 84 and changed[:, 1].max() <= 156  # (a SAM click would change more)
    assert len(changed) >= (row == (255 if add else 0)).sum() >= 30

    # Undo brings back the mask from the click alone.
    before = _photo_src(page)
    page.locator("#undo-stroke").click()
    _wait_photo_changed(page, before)
    undone, href = _download_mask(page, tmp_path, "undone", href)
    assert np.array_equal(undone, clicked)

    # An uploaded mask (white = repaint) becomes the subject: the preview tints the rest...
    mask = np.zeros((120, 160), np.uint8)
    mask[:, 100:] = 255
    mask_path = tmp_path / "mask.png"
    Image.fromarray(mask, "L").save(mask_path)
    before = _photo_src(page)
    page.locator("#mask-upload input[type=file]").set_input_files(str(mask_path))
    _wait_photo_changed(page, before)
    shown = np.asarray(Image.open(io.BytesIO(page.request.get(_photo_src(page)).body())).convert("RGB"))
    original = np.asarray(Image.open(photo).convert("RGB"))
    assert shown.shape == original.shape
    # The preview is served as lossy WebP (chroma smeared over a few pixels at the edge): per column,
    # how much bluer than the photo it is, on average.
    change = shown.astype(int) - original.astype(int)
    bluer = (change[..., 2] - change[..., 0]).mean(axis=0)
    assert (bluer[:96] > 30).all()  # kept: tinted (45 % towards blue)
    assert (np.abs(bluer[104:]) < 10).all()  # repainted: the photo's own colours
    # ... and comes back out as the same PNG.
    out, _ = _download_mask(page, tmp_path, "uploaded", href)
    assert np.array_equal(out, mask)

    # A white background on a square canvas with the hard edge: no model, exact pixels. The photo
    # sits in the middle of a 160x160 frame; where the mask repaints, and all around, it is white.
    page.locator("#edge").get_by_text("hard").click()
    _open(page, "background-canvas")
    page.locator("#background").get_by_text("colour").click()
    page.locator("#canvas").get_by_text("1:1").click()
    page.locator("#generate").click()
    saved = _download(page, tmp_path, "white")
    expected = np.full((160, 160, 3), 255, np.uint8)
    expected[20:140, :100] = original[:, :100]  # the kept part, byte for byte
    assert np.array_equal(np.asarray(Image.open(saved).convert("RGB")), expected)
    params = read_parameters(saved)
    assert params["Background"] == "color #ffffff" and params["Edge"] == "hard"
    assert params["Canvas"] == "160x160, photo at 0,20 (center)"


# --- the first view, the result where the eye is (issue 23) ---------------------------------------

LAPTOP, PHONE = (1366, 768), (390, 844)
# The controls a person can see and use at first load: Gradio blocks holding an input or a button
# and no such block inside (a shut section counts once, as its title), and the buttons and tabs
# outside any block (Generate, Cancel, the tabs, ...); not Gradio's own footer.
VISIBLE_CONTROLS = """() => {
  const seen = (e) => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const live = (e) => seen(e) && e.querySelector('input:not([type=hidden]), button, textarea, select');
  const blocks = [...document.querySelectorAll('.block')].filter(live);
  const leaves = blocks.filter((b) => !blocks.some((c) => c !== b && b.contains(c)));
  const buttons = [...document.querySelectorAll('button')].filter((b) => seen(b) && !b.closest('.block, footer'));
  const names = new Set(buttons.map((b) => b.textContent.trim()));  // Gradio draws each tab's button twice
  return [...leaves.map((b) => b.id || b.querySelector('label, button')?.textContent.trim().slice(0, 30)),
          ...names]; }"""
SECTIONS_SHUT = ("() => document.body.dataset.sectionsShut === 'yes' && document.querySelectorAll('.shut-at-load')"
                 ".length === 4 && !document.querySelector('.shut-at-load > button.label-wrap.open')")


def _sized_page(browser, size):
    context = browser.new_context(viewport={"width": size[0], "height": size[1]})
    context.add_init_script(SLOW_FRAMES)
    return context.new_page()


def _box(page, selector):
    return page.locator(selector).first.bounding_box()


def _in_view(box, size) -> bool:
    return (box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= size[0] + 1
            and box["y"] + box["height"] <= size[1] + 1)


def _screenshot(page, tmp_path, name):
    """Into tmp_path, and into BACKDROP_SCREENSHOTS (a folder, e.g. docs) when set."""
    import os

    page.screenshot(path=str(tmp_path / name))
    if folder := os.environ.get("BACKDROP_SCREENSHOTS"):
        page.screenshot(path=str(Path(folder) / name))


def _first_load(browser, app_url, size):
    page = _sized_page(browser, size)
    page.goto(app_url)
    page.wait_for_function(SECTIONS_SHUT, timeout=60_000)
    page.locator("#status li").first.wait_for(timeout=60_000)  # the status lines came
    return page


FIRST_VIEW = ("#photo", "#keyword", "#safety", "#generate", "#result", "#status")


def test_the_first_view_holds_photo_keyword_safety_generate_and_result(app_url, browser, tmp_path):
    page = _first_load(browser, app_url, LAPTOP)
    boxes = {s: _box(page, s) for s in FIRST_VIEW}
    assert all(_in_view(box, LAPTOP) for box in boxes.values()), boxes
    assert boxes["#result"]["x"] >= boxes["#photo"]["x"] + boxes["#photo"]["width"] - 1  # beside the photo
    assert boxes["#status"]["y"] < boxes["#photo"]["y"]  # what is missing stands above
    assert _in_view(_box(page, "#before-after-tab-button"), LAPTOP)  # the before / after slider, one click
    controls = page.evaluate(VISIBLE_CONTROLS)
    assert len(controls) <= 12, controls
    for section in ("Mask tools", "Background and canvas", "Prompt and mood", "Advanced"):
        assert page.locator(".shut-at-load > button.label-wrap").filter(has_text=section).count() == 1
    _screenshot(page, tmp_path, "page-1366x768.png")

    # On a phone: one column in the order of the work, Generate on the first screen.
    page = _first_load(browser, app_url, PHONE)
    boxes = {s: _box(page, s) for s in FIRST_VIEW}
    tops = [boxes[s]["y"] for s in ("#status", "#photo", "#keyword", "#safety", "#generate", "#result")]
    assert tops == sorted(tops), boxes
    assert all(box["x"] >= 0 and box["x"] + box["width"] <= PHONE[0] + 1 for box in boxes.values()), boxes
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE[0]  # no sideways scrolling
    assert boxes["#generate"]["y"] + boxes["#generate"]["height"] <= PHONE[1], boxes["#generate"]
    _screenshot(page, tmp_path, "page-390x844.png")


# Every 50 ms while an edit runs, which of Gradio's progress indicators are showing and what they say.
RECORD_PROGRESS = """() => { window.shown = [];
  setInterval(() => window.shown.push([...document.querySelectorAll('[data-testid=status-tracker]')]
    .filter((t) => !t.classList.contains('hide') && t.getBoundingClientRect().height > 0 && t.textContent.trim())
    .map((t) => [t.closest('[id]')?.id ?? '', t.textContent.trim()])), 50); }"""


def test_the_result_shows_in_view_with_one_progress_bar_and_values_set_as_sections_open(app_url, browser, tmp_path):
    """At 1366x768: Generate's one progress bar names the stage over the result, and the result
    lands in view. Values set the moment a section opens reach the edit (Gradio once reset them)."""
    photo = tmp_path / "photo.png"
    make_photo(160, 120).save(photo)
    page = _first_load(browser, app_url, LAPTOP)
    _upload_and_click(page, photo, tmp_path, "laptop")
    page.locator("#keyword textarea").fill("forest")
    for section, set_value in (
            ("advanced", lambda: page.locator("#steps input[type=range]").fill("3")),
            ("prompt-mood", lambda: page.locator("#prompt textarea").fill("a quiet pine forest")),
            ("background-canvas", lambda: page.locator("#place").get_by_text("left").click())):
        page.locator(f"#{section} > button.label-wrap").click()  # shut at first (checked by _first_load)
        set_value()  # at once, in the frame after opening
    page.locator("#canvas").get_by_text("16:9").click()  # makes "place" count: a wider frame
    page.locator("#generate").scroll_into_view_if_needed()
    page.evaluate(RECORD_PROGRESS)
    page.locator("#generate").click()
    page.locator("#result img").first.wait_for(timeout=180_000)
    page.evaluate("() => window.scrollTo(0, 0)")  # where a person looks after pressing Generate
    page.screenshot(path=str(tmp_path / "result.png"))
    result = _box(page, "#result img")
    assert _in_view(result, LAPTOP) and result["width"] > 200, result
    assert _in_view(_box(page, "#downloads"), LAPTOP)
    shown = [s for s in page.evaluate("() => window.shown") if s]
    assert shown and max(len(s) for s in shown) == 1, shown  # one indicator at a time...
    assert {where for s in shown for where, _ in s} == {"result"}, shown  # ... over the result
    assert any("Generating: step" in text for s in shown for _, text in s), shown  # naming stage and step
    saved = _download(page, tmp_path, "laptop")
    params = read_parameters(saved)
    assert params["Steps"] == "3" and params["Prompt"].startswith("a quiet pine forest"), params
    assert params["Canvas"].endswith("(left)"), params


def test_an_example_gives_a_plain_background_in_one_click_and_generate(app_url, browser, tmp_path):
    page = _first_load(browser, app_url, LAPTOP)
    page.locator("#examples").get_by_text("Astronaut on white").click()
    page.get_by_text("Example loaded with its mask: press Generate.").wait_for(timeout=60_000)
    page.locator("#generate").click()
    saved = _download(page, tmp_path, "astronaut")
    mask = np.asarray(Image.open(Path(__file__).parent.parent / "examples" / "astronaut-mask.png").convert("L"))
    result = np.asarray(Image.open(saved).convert("RGB"))
    assert result.shape[:2] == mask.shape == (512, 512)
    from scipy import ndimage

    inside = ndimage.binary_erosion(mask == 255, iterations=16)  # the background, beyond the matte band
    assert inside.mean() > 0.3 and (result[inside] == 255).all()  # white where the mask repaints
    assert read_parameters(saved)["Background"] == "color #ffffff"
    page.evaluate("() => window.scrollTo(0, 0)")
    _screenshot(page, tmp_path, "page-example-1366x768.png")
