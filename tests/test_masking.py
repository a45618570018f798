"""Click-to-mask: the tiny SAM (a registered variant) through the real loader and predictor,
refinement areas, GrabCut, checkpoint download against a local HTTP server, the one shared
predictor, and concurrent sessions."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from file_server import FileServer
from PIL import Image

from pipelines import downloads
from pipelines.masks import masking, sam_models
from pipelines.downloads import ensure_sam_checkpoint
from pipelines.masks.grabcut import grabcut_mask
from pipelines.masks.masking import MaskPredictor, overlay, predict_masks, refine_mask
from pipelines.masks.sam_models import get_predictor, load_sam, sam_status
from pipelines.settings import Settings
from pipelines.types import ClickPoint


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def noise_photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def disk_photo(width: int = 320, height: int = 240, seed: int = 0):
    """A red disk (centre (150, 110), radius 60) on a background of random 8-pixel colour blocks."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3))
    background = np.kron(blocks, np.ones((8, 8, 1)))[:height, :width] + rng.normal(0, 20, (height, width, 3))
    yy, xx = np.mgrid[:height, :width]
    disk = (xx - 150) ** 2 + (yy - 110) ** 2 < 60 ** 2
    pixels = background.copy()
    pixels[disk] = np.array([220, 40, 60]) + rng.normal(0, 12, (disk.sum(), 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"), disk


def square(size=(80, 80), top=30, left=30, side=20) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[top:top + side, left:left + side] = True
    return mask


@pytest.fixture(scope="module")
def tiny_sam(tiny_sam_checkpoint):
    return load_sam(tiny_sam_checkpoint, "tiny", "cpu")


def count_encoder_calls(monkeypatch, sam) -> list[int]:
    calls = [0]
    forward = sam.image_encoder.forward

    def counted(x):
        calls[0] += 1
        return forward(x)

    monkeypatch.setattr(sam.image_encoder, "forward", counted)
    return calls


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------
def test_load_sam_builds_the_registered_tiny_variant(tiny_sam, tiny_sam_checkpoint):
    encoder = tiny_sam.image_encoder
    assert encoder.img_size == 256
    assert len(encoder.blocks) == 2
    assert encoder.blocks[0].attn.num_heads == 2
    assert [block.window_size for block in encoder.blocks] == [4, 0]  # block 1 is global
    assert tiny_sam.mask_decoder.transformer.layers[0].self_attn.num_heads == 2
    assert tiny_sam.mask_decoder.transformer.layers[0].mlp.lin1.out_features == 64
    assert not tiny_sam.training
    saved = torch.load(tiny_sam_checkpoint, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in tiny_sam.state_dict().items())
    # Nothing is inferred from shapes: as another variant the file is refused, naming the one it fits.
    with pytest.raises(RuntimeError) as info:
        load_sam(tiny_sam_checkpoint, "vit_h", "cpu")
    assert str(info.value) == (f"SAM checkpoint {tiny_sam_checkpoint} is a tiny model, not vit_h: "
                               "set BACKDROP_SAM_MODEL_TYPE=tiny")


@pytest.mark.parametrize("model_type", ["vit_h", "vit_l", "vit_b"])
def test_official_variants_are_checked_against_the_registry(model_type):
    from segment_anything import sam_model_registry

    with torch.device("meta"):  # shapes only: no memory, no time
        state = sam_model_registry[model_type]().state_dict()
    sam_models.check_state_dict(state, model_type)  # fits: no error
    other = "vit_h" if model_type != "vit_h" else "vit_b"
    with pytest.raises(RuntimeError) as info:
        sam_models.check_state_dict(state, other, "sam.pth")
    assert str(info.value) == (f"SAM checkpoint sam.pth is a {model_type} model, not {other}: "
                               f"set BACKDROP_SAM_MODEL_TYPE={model_type}")


def test_bad_checkpoints_give_one_clear_line(tmp_path, tiny_sam_checkpoint):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(RuntimeError, match=r"garbage\.pth is not a readable PyTorch file"):
        load_sam(garbage)

    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(RuntimeError, match=r"is not a Segment Anything checkpoint \(no image_encoder"):
        load_sam(other)

    state = torch.load(tiny_sam_checkpoint, weights_only=True)
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 16)
    del state["prompt_encoder.not_a_point_embed.weight"]
    mismatched = tmp_path / "mismatched.pth"
    torch.save(state, mismatched)
    with pytest.raises(RuntimeError) as info:
        load_sam(mismatched, "tiny")
    message = str(info.value)
    assert "\n" not in message
    assert "does not fit the tiny architecture" in message
    assert "missing prompt_encoder.not_a_point_embed.weight" in message
    assert "mask_decoder.iou_token.weight is (1, 16), expected (1, 32)" in message

    with pytest.raises(RuntimeError, match="does not exist"):
        load_sam(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="vit_x"):
        load_sam(tiny_sam_checkpoint, "vit_x")


# ----------------------------------------------------------------------------------------------
# predicting
# ----------------------------------------------------------------------------------------------
def test_predictions_match_sam_predictor(tiny_sam):
    """Our cached-features path gives exactly what segment_anything's SamPredictor gives."""
    from segment_anything import SamPredictor

    photo = noise_photo(300, 200, seed=1)
    reference = SamPredictor(tiny_sam)
    reference.set_image(np.asarray(photo))
    predictor = MaskPredictor(tiny_sam)

    points = [ClickPoint(100, 80, 1), ClickPoint(250, 150, 0)]
    result = predictor.predict(photo, points)
    masks, scores, logits = reference.predict(np.array([[100, 80], [250, 150]]), np.array([1, 0]))
    order = np.argsort(-scores)
    assert result.method == "sam" and result.notices == []
    assert result.masks.shape == (3, 200, 300) and result.masks.dtype == bool
    assert result.scores.dtype == np.float32 and list(result.scores) == sorted(result.scores, reverse=True)
    assert result.low_res_logits.shape == (3, 64, 64) and result.low_res_logits.dtype == np.float32
    assert np.array_equal(result.masks, masks[order])
    np.testing.assert_allclose(result.scores, scores[order], rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.low_res_logits, logits[order], rtol=0, atol=1e-5)

    # A further click feeds the chosen candidate's logits back, as SAM's demo does.
    points.append(ClickPoint(120, 90, 1))
    chosen = 1
    again = predictor.predict(photo, points, mask_input=result.next_mask_input(chosen))
    masks, scores, _ = reference.predict(np.array([[100, 80], [250, 150], [120, 90]]), np.array([1, 0, 1]),
                                         mask_input=logits[order[chosen]][None])
    order = np.argsort(-scores)
    assert np.array_equal(again.masks, masks[order])
    np.testing.assert_allclose(again.scores, scores[order], rtol=0, atol=1e-6)
    without = predictor.predict(photo, points)
    assert not np.allclose(without.scores, again.scores)  # the mask input is really used


def test_embedding_is_computed_once_per_photo_and_bounded(tiny_sam, monkeypatch):
    calls = count_encoder_calls(monkeypatch, tiny_sam)
    predictor = MaskPredictor(tiny_sam, cache_size=2)
    first, second, third = (noise_photo(160, 120, seed) for seed in (10, 11, 12))

    assert predictor.embed(first) == masking.image_hash(first)
    result = predictor.predict(first, [ClickPoint(10, 10, 1)])
    for i in range(5):
        result = predictor.predict(first, [ClickPoint(10, 10, 1), ClickPoint(20 + i, 30, i % 2)],
                                   mask_input=result.next_mask_input())
    assert (calls[0], predictor.embed_count) == (1, 1)
    # An equal photo in another object hits the cache: the key is the content.
    predictor.predict(first.copy(), [ClickPoint(5, 5, 1)])
    assert calls[0] == 1

    predictor.predict(second, [ClickPoint(10, 10, 1)])
    predictor.predict(first, [ClickPoint(10, 10, 1)])  # first is now the most recently used
    predictor.predict(third, [ClickPoint(10, 10, 1)])  # evicts second
    assert calls[0] == 3
    predictor.predict(first, [ClickPoint(10, 10, 1)])
    assert calls[0] == 3
    predictor.predict(second, [ClickPoint(10, 10, 1)])
    assert (calls[0], predictor.embed_count) == (4, 4)


def test_concurrent_sessions_never_get_each_others_masks(tiny_sam, monkeypatch):
    """Threads click on two photos at once through one predictor whose cache holds one photo, so
    embeddings are evicted and recomputed under their feet; every answer must be its photo's."""
    photos = [noise_photo(200, 150, seed) for seed in (20, 21)]
    clicks = [[ClickPoint(40 + 10 * i, 50, 1), ClickPoint(150, 100 - 5 * i, 0)] for i in range(4)]
    expected = {}
    serial = MaskPredictor(tiny_sam)
    for p, photo in enumerate(photos):
        for c, points in enumerate(clicks):
            expected[p, c] = serial.predict(photo, points)
    assert not np.array_equal(expected[0, 0].masks, expected[1, 0].masks)  # the test can tell them apart

    calls = count_encoder_calls(monkeypatch, tiny_sam)
    shared = MaskPredictor(tiny_sam, cache_size=1)
    start = threading.Barrier(6)
    failures: list[str] = []

    def session(n: int) -> None:
        p = n % 2
        start.wait()
        for round_ in range(3):
            for c, points in enumerate(clicks):
                got = shared.predict(photos[p], points)
                want = expected[p, c]
                if not (np.array_equal(got.masks, want.masks) and np.allclose(got.scores, want.scores, atol=1e-6)):
                    failures.append(f"session {n} photo {p} click {c} round {round_}")

    threads = [threading.Thread(target=session, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert 2 <= calls[0] == shared.embed_count <= 6 * 3 * 4


def test_embedding_a_new_photo_does_not_block_clicks_on_another(tiny_sam, monkeypatch):
    predictor = MaskPredictor(tiny_sam)
    ready = noise_photo(160, 120, seed=30)
    predictor.embed(ready)

    entered, release = threading.Event(), threading.Event()
    forward = tiny_sam.image_encoder.forward

    def slow(x):
        entered.set()
        assert release.wait(timeout=30)
        return forward(x)

    monkeypatch.setattr(tiny_sam.image_encoder, "forward", slow)
    embedding = threading.Thread(target=predictor.embed, args=(noise_photo(160, 120, seed=31),))
    embedding.start()
    try:
        assert entered.wait(timeout=30)
        started = time.perf_counter()
        result = predictor.predict(ready, [ClickPoint(80, 60, 1)])  # while the other photo is encoding
        assert time.perf_counter() - started < 5
        assert result.masks.shape == (3, 120, 160)
    finally:
        release.set()
        embedding.join(timeout=30)
    assert predictor.embed_count == 2


def test_points_are_checked(tiny_sam):
    photo = noise_photo(64, 48, seed=2)
    predictor = MaskPredictor(tiny_sam)
    for pred in (predictor, None):
        with pytest.raises(ValueError, match=r"^point \(64, 10\) is outside the photo \(64 x 48\)$"):
            predict_masks(photo, [ClickPoint(64, 10, 1)], pred)
        with pytest.raises(ValueError, match=r"^point \(-1, 0\) is outside the photo \(64 x 48\)$"):
            predict_masks(photo, [ClickPoint(3, 3, 1), ClickPoint(-1, 0, 0)], pred)
        with pytest.raises(ValueError, match="positive point"):
            predict_masks(photo, [ClickPoint(3, 3, 0)], pred)
    with pytest.raises(ValueError, match=r"mask_input has shape \(1, 256, 256\); expected \(1, 64, 64\)"):
        predictor.predict(photo, [ClickPoint(3, 3, 1)], mask_input=np.zeros((1, 256, 256)))


# ----------------------------------------------------------------------------------------------
# GrabCut fallback
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grabcut_one_click_finds_the_disk(seed):
    photo, disk = disk_photo(seed=seed)
    subject = grabcut_mask(photo, [ClickPoint(150, 110, 1)])
    assert subject.shape == disk.shape and subject.dtype == bool
    assert (subject & disk).sum() / (subject | disk).sum() >= 0.9


def test_grabcut_gives_the_same_mask_whatever_ran_before():
    """GrabCut's k-means draws from OpenCV's RNG, which other code moves: the fallback seeds it, so
    the same photo and click give the same mask (unseeded, these three differ in 74-131 pixels)."""
    import cv2

    photo, _ = disk_photo(seed=3)
    masks = []
    for state in (1, 2, 3):
        cv2.setRNGSeed(state)
        masks.append(grabcut_mask(photo, [ClickPoint(100, 80, 1)]))  # on the disk's rim: ambiguous
    assert all(np.array_equal(masks[0], m) for m in masks[1:])


def test_grabcut_fallback_result_and_large_photo():
    photo, disk = disk_photo(seed=3)
    result = predict_masks(photo, [ClickPoint(150, 110, 1), ClickPoint(10, 10, 0)], None)
    assert result.method == "grabcut"
    assert result.notices[0].startswith("No SAM checkpoint: masks come from GrabCut (")
    assert result.masks.shape == (3, 240, 320)
    assert np.array_equal(result.masks[0], result.masks[1]) and np.array_equal(result.masks[0], result.masks[2])
    assert list(result.scores) == [0, 0, 0]
    assert result.low_res_logits.shape == (3, 256, 256)
    assert (result.masks[0] & disk).sum() / (result.masks[0] | disk).sum() >= 0.9

    # A photo larger than GrabCut's working size is segmented on a copy and scaled back.
    big = photo.resize((1280, 960), Image.Resampling.NEAREST)
    big_disk = np.asarray(Image.fromarray(disk).resize((1280, 960), Image.Resampling.NEAREST))
    subject = grabcut_mask(big, [ClickPoint(600, 440, 1)])
    assert subject.shape == (960, 1280)
    assert (subject & big_disk).sum() / (subject | big_disk).sum() >= 0.9


# ----------------------------------------------------------------------------------------------
# refinement
# ----------------------------------------------------------------------------------------------
def test_refine_default_repaints_the_background():
    subject = square()
    repaint = refine_mask(subject)
    assert repaint.dtype == np.float32 and repaint.shape == (80, 80)
    assert np.array_equal(repaint, (~subject).astype(np.float32))
    assert np.array_equal(refine_mask(subject, edit_subject=True), subject.astype(np.float32))


def test_grow_and_shrink_exact_areas():
    subject = square(side=20)
    kept = lambda m: int((m == 0).sum())  # noqa: E731
    # Euclidean growth by 3: the square, four 20x3 sides, and four quarter disks of the lattice
    # points (a, b), a, b >= 1, a^2 + b^2 <= 9: (1,1), (1,2), (2,1), (2,2).
    assert kept(refine_mask(subject, grow=3)) == 400 + 4 * 20 * 3 + 4 * 4
    assert kept(refine_mask(subject, grow=-3)) == 14 * 14
    assert kept(refine_mask(subject, grow=-10)) == 0
    # The photo's frame is not an edge of the subject: a corner square shrinks from two sides only.
    corner = square(top=0, left=0, side=20)
    assert kept(refine_mask(corner, grow=-3)) == 17 * 17
    # With the subject repainted, grow still applies to the subject.
    assert int(refine_mask(subject, grow=3, edit_subject=True).sum()) == 656
    assert int(refine_mask(subject, grow=-3, edit_subject=True).sum()) == 196


def test_fill_holes_and_drop_specks_exact_areas():
    subject = square(size=(100, 100), top=10, left=10, side=30)  # 900 px
    subject[15:21, 15:21] = False  # a 36 px hole
    subject[25:35, 25:35] = False  # a 100 px hole
    subject[70:73, 70:73] = True  # a 9 px speck
    subject[80:85, 10:15] = True  # a 25 px speck
    kept = lambda m: int((m == 0).sum())  # noqa: E731
    assert kept(refine_mask(subject)) == 900 - 136 + 9 + 25
    assert kept(refine_mask(subject, fill_holes=50)) == 900 - 100 + 9 + 25
    assert kept(refine_mask(subject, fill_holes=101)) == 900 + 9 + 25
    assert kept(refine_mask(subject, min_area=10)) == 900 - 136 + 25
    assert kept(refine_mask(subject, fill_holes=101, min_area=26)) == 900
    # Background touching the frame is never a hole.
    open_bottom = square(size=(50, 50), top=20, left=10, side=30)
    open_bottom[30:, 20:30] = False
    assert kept(refine_mask(open_bottom, fill_holes=10_000)) == int(open_bottom.sum())


def test_feather_ramps_inside_the_repaint_region_only():
    subject = square(side=20)  # rows and columns 30..49
    repaint = refine_mask(subject, feather=4)
    assert np.all(repaint[subject] == 0.0)  # the kept subject is exactly 0
    assert np.all(repaint[~subject] > 0.0)
    np.testing.assert_allclose(repaint[40, 50:57], [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(repaint[40, 23:30], [1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2], atol=1e-6)
    assert repaint.min() == 0.0 and repaint.max() == 1.0

    # Editing the subject: the background is kept exactly, the ramp lies inside the subject.
    repaint = refine_mask(subject, feather=4, edit_subject=True)
    assert np.all(repaint[~subject] == 0.0)
    np.testing.assert_allclose(repaint[40, 30:37], [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0], atol=1e-6)

    # Grow then feather: the kept region is the grown subject, still exactly 0.
    repaint = refine_mask(subject, grow=2, feather=3)
    assert int((repaint == 0).sum()) == 400 + 4 * 20 * 2 + 4 * 1
    np.testing.assert_allclose(repaint[40, 52:56], [0.25, 0.5, 0.75, 1.0], atol=1e-6)

    assert np.all(refine_mask(np.zeros((8, 8), bool), feather=3) == 1.0)  # nothing kept


def test_refine_rejects_bad_input():
    with pytest.raises(ValueError, match="must be 2-D"):
        refine_mask(np.zeros((3, 8, 8), bool))
    with pytest.raises(ValueError, match="feather must be 0 or more"):
        refine_mask(square(), feather=-1)


def test_overlay_tints_the_subject_and_marks_points():
    photo = Image.new("RGB", (100, 80), (100, 100, 100))
    subject = square(size=(80, 100), top=10, left=10, side=40)
    preview = np.asarray(overlay(photo, subject, [ClickPoint(30, 30, 1), ClickPoint(80, 60, 0)]))
    assert preview.shape == (80, 100, 3)
    tinted = [round(100 * 0.55 + c * 0.45) for c in masking.TINT]
    assert list(preview[45, 45]) == tinted  # subject, away from the points
    assert list(preview[5, 95]) == [100, 100, 100]  # background untouched
    assert list(preview[30, 30]) == [0, 255, 0]
    assert list(preview[60, 80]) == [255, 0, 0]


# ----------------------------------------------------------------------------------------------
# checkpoint download and the shared predictor
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def file_server():
    servers = []

    def start(files, content_length=None):
        servers.append(FileServer(files, content_length))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def register(monkeypatch, data: bytes, size: int | None = None) -> str:
    """Make a test-only 'official' name for `data`, torch-hub style (hash prefix in the name)."""
    prefix = hashlib.sha256(data).hexdigest()[:6]
    name = f"sam_test_{prefix}.pth"
    monkeypatch.setitem(downloads.SAM_DOWNLOADS, name, (prefix, len(data) if size is None else size))
    return name


def settings_for(path: Path, base: str = "http://127.0.0.1:9/", auto: bool = True,
                 variant: str = "vit_h") -> Settings:
    return Settings(sam_checkpoint=path, sam_download_base=base, sam_auto_download=auto,
                    checkpoint_dir=path.parent, device="cpu", sam_model_type=variant)


def test_download_good_file(tmp_path, monkeypatch, file_server):
    data = bytes(range(256)) * 4096  # 1 MiB
    name = register(monkeypatch, data)
    server = file_server({name: data})
    dest = tmp_path / "checkpoints" / name
    progress = []
    path = ensure_sam_checkpoint(settings_for(dest, server.url), on_progress=lambda d, t: progress.append((d, t)))
    assert path == dest and dest.read_bytes() == data
    assert progress[-1] == (len(data), len(data))
    assert [p.name for p in dest.parent.iterdir()] == [name]  # no temporary file left
    assert ensure_sam_checkpoint(settings_for(dest, server.url)) == dest and server.hits == 1  # not again


def test_download_bad_hash_wrong_size_and_missing_leave_nothing(tmp_path, monkeypatch, file_server):
    data = b"the real checkpoint" * 100
    name = register(monkeypatch, data)
    dest = tmp_path / name
    server = file_server({name: data.upper()})  # same size, other bytes
    with pytest.raises(RuntimeError, match=rf"downloaded {name} is damaged: its SHA-256 starts with [0-9a-f]{{6}}"):
        ensure_sam_checkpoint(settings_for(dest, server.url))
    assert list(tmp_path.iterdir()) == []

    # The server announces another size than the official one: refused before downloading.
    name = register(monkeypatch, data, size=len(data) + 1)
    server = file_server({name: data})
    with pytest.raises(RuntimeError, match=rf"is {len(data)} bytes, expected {len(data) + 1}"):
        ensure_sam_checkpoint(settings_for(tmp_path / name, server.url))
    with pytest.raises(RuntimeError, match="HTTP 404"):
        ensure_sam_checkpoint(settings_for(tmp_path / "sam_vit_b_01ec64.pth", server.url))
    assert list(tmp_path.iterdir()) == []
    # The connection ends before Content-Length: a short file is never moved into place; what came
    # is kept as <name>.part for the next try to resume (see test_downloads.py).
    name = register(monkeypatch, data)
    server = file_server({name: data[:500]}, content_length={name: len(data)})
    with pytest.raises(RuntimeError, match="could not download|stopped at"):
        ensure_sam_checkpoint(settings_for(tmp_path / name, server.url))
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.part"]
    assert (tmp_path / f"{name}.part").read_bytes() == data[:500]


def test_download_connection_refused_fails_fast(tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    name = register(monkeypatch, b"x")
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match=rf"could not download http://127.0.0.1:{port}/{name}: .*refused"):
        ensure_sam_checkpoint(settings_for(tmp_path / name, f"http://127.0.0.1:{port}"))
    assert time.perf_counter() - started < 3


def test_no_download_when_switched_off_or_not_official(tmp_path):
    with pytest.raises(RuntimeError, match="does not exist and BACKDROP_SAM_AUTO_DOWNLOAD is off"):
        ensure_sam_checkpoint(settings_for(tmp_path / "sam_vit_h_4b8939.pth", auto=False))
    with pytest.raises(RuntimeError, match="only the official files"):
        ensure_sam_checkpoint(settings_for(tmp_path / "my_sam.pth"))


def test_get_predictor_downloads_and_loads_a_checkpoint(tmp_path, monkeypatch, file_server, tiny_sam_checkpoint):
    data = tiny_sam_checkpoint.read_bytes()
    name = register(monkeypatch, data)
    server = file_server({name: data})
    settings = settings_for(tmp_path / "checkpoints" / name, server.url, variant="tiny")
    assert sam_status(settings) == (f"SAM tiny on cpu (downloads {name}, "
                                    f"{downloads.format_size(len(data))}, on the first click)")

    predictor, notices = get_predictor(settings)
    assert isinstance(predictor, MaskPredictor) and predictor.cache_size == settings.sam_cache_size
    assert predictor.variant == "tiny" and notices == []
    assert get_predictor(settings)[0] is predictor and server.hits == 1  # the one cache
    assert sam_status(settings) == "SAM tiny on cpu"
    result = predict_masks(noise_photo(64, 48, 3), [ClickPoint(10, 10, 1)], predictor)
    assert result.method == "sam" and result.masks.shape == (3, 48, 64)


def test_get_predictor_falls_back_and_retries_on_the_next_call(tmp_path, monkeypatch, file_server,
                                                                tiny_sam_checkpoint):
    name = register(monkeypatch, b"missing on the server")
    server = file_server({})
    dest = tmp_path / name
    settings = settings_for(dest, server.url, variant="tiny")
    predictor, notices = get_predictor(settings)
    assert predictor is None and len(notices) == 1 and "HTTP 404" in notices[0]
    assert get_predictor(settings) == (None, notices) and server.hits == 2  # not pinned: asked again
    assert sam_status(settings).startswith("Masks without SAM: SAM unavailable: could not download")
    assert sam_status(settings).endswith("; SAM is tried again on the next photo")

    off = settings_for(tmp_path / "sam_vit_h_4b8939.pth", auto=False)
    hint = (f"put sam_vit_h_4b8939.pth in {tmp_path}/, or run `python -m pipelines download sam`: 2.6 GB")
    assert sam_status(off) == f"Masks without SAM: no SAM checkpoint at {tmp_path}/sam_vit_h_4b8939.pth ({hint})"
    assert get_predictor(off) == (None, [f"SAM unavailable: SAM checkpoint {tmp_path}/sam_vit_h_4b8939.pth "
                                         "does not exist and BACKDROP_SAM_AUTO_DOWNLOAD is off"])
    assert sam_status(off) == (f"Masks without SAM: SAM unavailable: SAM checkpoint {tmp_path}/sam_vit_h_4b8939.pth "
                               f"does not exist and BACKDROP_SAM_AUTO_DOWNLOAD is off "
                               f"({hint}); SAM is tried again on the next photo")

    # An unusable file is a notice too, and a replaced file is tried again.
    dest.write_bytes(b"not a checkpoint")
    predictor, notices = get_predictor(settings)
    assert predictor is None and "is not a readable PyTorch file" in notices[0]
    dest.write_bytes(tiny_sam_checkpoint.read_bytes())
    assert isinstance(get_predictor(settings)[0], MaskPredictor)


def test_a_checkpoint_of_another_registered_variant_loads_as_that_variant(tmp_path, tiny_sam_checkpoint):
    checkpoint = tmp_path / "sam.pth"  # a file of its own: not loaded by an earlier test
    checkpoint.write_bytes(tiny_sam_checkpoint.read_bytes())
    settings = settings_for(checkpoint, auto=False, variant="vit_h")
    predictor, notices = get_predictor(settings)
    notice = "the SAM checkpoint is a tiny model, not vit_h: loaded as tiny (set BACKDROP_SAM_MODEL_TYPE=tiny)"
    assert predictor.variant == "tiny" and predictor.notices == notices == [notice]
    assert get_predictor(settings) == (predictor, [])  # said once, with the load; the status line keeps it
    assert sam_status(settings) == f"SAM tiny on cpu ({notice})"
    result = predict_masks(noise_photo(64, 48, 4), [ClickPoint(10, 10, 1)], predictor)
    assert result.method == "sam"
