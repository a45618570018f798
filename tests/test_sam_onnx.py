"""SAM through ONNX Runtime with the tiny SAM exported to ONNX here (both encoder layouts, both
decoder exports): the same masks as the PyTorch path, the coordinate transform, the shared
predictor, downloads of the pair, and one-line errors. Real weights: tests/real/test_real_sam_onnx.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from file_server import FileServer
from PIL import Image

from pipelines import downloads
from pipelines.masks.masking import MaskPredictor, predict_masks
from pipelines.entry.page import candidate_choices
from pipelines.masks.sam_models import get_predictor, load_sam, sam_status
from pipelines.masks.sam_onnx import OnnxMaskPredictor, load_onnx_sam
from pipelines.settings import Settings
from pipelines.types import ClickPoint

pytest.importorskip("onnx")  # torch.onnx.export needs it (requirements-dev.txt)


def export_tiny_sam(sam, folder: Path, layout: str = "nchw", single_mask: bool = False) -> tuple[Path, Path]:
    """The tiny SAM as an ONNX (encoder, decoder) pair, exported as the official scripts do.

    layout "nchw": the encoder alone, taking the normalised, padded (1, 3, S, S) input;
    "hwc": normalising and padding inside the graph, taking the resized (H, W, 3) photo, 0-255;
    "hwc_fixed": the same with a fixed input of 3/4 S x S (as rembg's exports take 684 x 1024).
    """
    from segment_anything.utils.onnx import SamOnnxModel

    folder.mkdir(parents=True, exist_ok=True)
    size = sam.image_encoder.img_size
    encoder, decoder = folder / f"encoder_{layout}.onnx", folder / f"decoder_{int(single_mask)}.onnx"

    class Preprocessed(torch.nn.Module):  # what samexporter's --use-preprocess wraps around the encoder
        def __init__(self):
            super().__init__()
            self.sam = sam

        def forward(self, image):
            x = (image.permute(2, 0, 1)[None] - self.sam.pixel_mean) / self.sam.pixel_std
            x = torch.nn.functional.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))
            return self.sam.image_encoder(x)

    with torch.no_grad():
        if layout == "nchw":
            torch.onnx.export(sam.image_encoder, (torch.randn(1, 3, size, size),), encoder, dynamo=False,
                              input_names=["input"], output_names=["output"])
        else:
            dynamic = {"input_image": {0: "height", 1: "width"}} if layout == "hwc" else None
            torch.onnx.export(Preprocessed().eval(), (torch.rand(size * 3 // 4, size, 3) * 255,), encoder, dynamo=False,
                              input_names=["input_image"], output_names=["image_embeddings"], dynamic_axes=dynamic)
        grid = sam.prompt_encoder.image_embedding_size
        dummy = {
            "image_embeddings": torch.randn(1, sam.prompt_encoder.embed_dim, *grid),
            "point_coords": torch.randint(0, size, (1, 5, 2), dtype=torch.float),
            "point_labels": torch.randint(0, 4, (1, 5), dtype=torch.float),
            "mask_input": torch.randn(1, 1, 4 * grid[0], 4 * grid[1]),
            "has_mask_input": torch.tensor([1.0]),
            "orig_im_size": torch.tensor([size * 3 // 4, size], dtype=torch.float),
        }
        torch.onnx.export(SamOnnxModel(sam, return_single_mask=single_mask), tuple(dummy.values()), decoder,
                          dynamo=False, input_names=list(dummy), opset_version=17,
                          output_names=["masks", "iou_predictions", "low_res_masks"],
                          dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}})
    return encoder, decoder


@pytest.fixture(scope="module")
def tiny_sam(tiny_sam_checkpoint):
    return load_sam(tiny_sam_checkpoint, "tiny", "cpu")


@pytest.fixture(scope="module")
def onnx_pairs(tiny_sam, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {
        "nchw": export_tiny_sam(tiny_sam, folder, "nchw"),
        "hwc_single": export_tiny_sam(tiny_sam, folder, "hwc", single_mask=True),
        "hwc_fixed": export_tiny_sam(tiny_sam, folder, "hwc_fixed"),
    }


def photo(width: int = 300, height: int = 200, seed: int = 0) -> Image.Image:
    """Smooth colour blobs (a resize changes little, so both paths see nearly the same pixels)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


CLICKS = [ClickPoint(70, 150, 1), ClickPoint(240, 40, 1), ClickPoint(200, 160, 0)]


def test_onnx_gives_the_pytorch_masks_for_the_same_weights(tiny_sam, onnx_pairs):
    image = photo()
    torch_predictor = MaskPredictor(tiny_sam)
    onnx_predictor = load_onnx_sam(*onnx_pairs["nchw"])
    expected = predict_masks(image, CLICKS, torch_predictor)
    got = predict_masks(image, CLICKS, onnx_predictor)
    assert got.method == "sam" and got.distinct == 3 and got.masks.shape == (3, 200, 300)
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4)
    np.testing.assert_allclose(got.low_res_logits, expected.low_res_logits, atol=1e-3)
    assert (got.masks != expected.masks).mean() < 1e-3  # only pixels at logit 0 may flip
    # The chosen candidate fed back as mask_input: still the PyTorch answer.
    more = CLICKS + [ClickPoint(20, 20, 0)]
    expected = predict_masks(image, more, torch_predictor, mask_input=expected.next_mask_input(1))
    got = predict_masks(image, more, onnx_predictor, mask_input=got.next_mask_input(1))
    np.testing.assert_allclose(got.low_res_logits, expected.low_res_logits, atol=1e-3)
    assert (got.masks != expected.masks).mean() < 1e-3


def test_transposed_or_unscaled_clicks_would_give_other_masks(tiny_sam, onnx_pairs):
    """The transform is not a no-op the model forgives: the clicks as (Y, X), or in photo pixels
    unscaled, give other logits than the right transform, which matches PyTorch's."""
    image = photo(300, 120)
    onnx_predictor = load_onnx_sam(*onnx_pairs["nchw"])
    right = predict_masks(image, [ClickPoint(250, 30, 1)], onnx_predictor).low_res_logits
    torch_logits = predict_masks(image, [ClickPoint(250, 30, 1)], MaskPredictor(tiny_sam)).low_res_logits
    transposed = predict_masks(image, [ClickPoint(30, 110, 1)], onnx_predictor).low_res_logits  # (Y, X) -> X=30
    scale = 300 / 256  # clicks given in photo pixels, not the encoder's frame
    unscaled = predict_masks(image, [ClickPoint(round(250 * scale), round(30 * scale), 1)], onnx_predictor).low_res_logits
    error = np.abs(right - torch_logits).max()
    assert error < 1e-3
    assert np.abs(transposed - torch_logits).max() > 100 * error
    assert np.abs(unscaled - torch_logits).max() > 100 * error


def test_preprocessing_inside_the_graph_and_a_single_mask_decoder(onnx_pairs):
    image = photo(200, 300, seed=1)  # portrait: the padding is on the right
    nchw = load_onnx_sam(*onnx_pairs["nchw"])
    hwc = load_onnx_sam(*onnx_pairs["hwc_single"])
    assert (nchw.frame, hwc.frame) == (256, 256)
    nchw.embed(image), hwc.embed(image)
    (a,), (b,) = nchw._cache.values(), hwc._cache.values()
    assert a.input_size == b.input_size == (256, 171)
    np.testing.assert_allclose(a.features, b.features, atol=1e-4)  # the same embedding either way
    result = predict_masks(image, [ClickPoint(100, 150, 1)], hwc)
    assert result.distinct == 1 and result.masks.shape == (3, 300, 200)
    assert (result.masks == result.masks[:1]).all() and (result.scores == result.scores[0]).all()
    assert candidate_choices(result) == [(f"1 (score {result.scores[0]:.2f})", 0)]  # one mask to pick, not three
    assert hwc.embed_count == 1  # the click reused the embedding


def test_an_encoder_of_fixed_size_gets_the_photo_fitted_into_it(onnx_pairs):
    nchw = load_onnx_sam(*onnx_pairs["nchw"])
    fixed = load_onnx_sam(*onnx_pairs["hwc_fixed"])
    assert fixed._fixed == (192, 256) and fixed.frame == 256
    landscape = photo(320, 240, seed=2)  # 4:3, the fixed input's own shape: the same embedding
    nchw.embed(landscape), fixed.embed(landscape)
    (a,), (b,) = nchw._cache.values(), fixed._cache.values()
    assert a.input_size == b.input_size == (192, 256)
    np.testing.assert_allclose(a.features, b.features, atol=1e-4)
    # A portrait photo is scaled to fit 192 rows (not to a 256 long side), padded with black.
    portrait = photo(200, 300, seed=3)
    result = predict_masks(portrait, [ClickPoint(100, 150, 1)], fixed)
    (entry,) = [e for e in fixed._cache.values() if e.original_size == (300, 200)]
    assert entry.input_size == (192, 128) and result.masks.shape == (3, 300, 200)
    np.testing.assert_allclose(fixed.frame_coords([ClickPoint(100, 150, 1)], entry), [[64.0, 96.0]])


def test_bad_files_are_one_line_errors(onnx_pairs, tmp_path):
    encoder, decoder = onnx_pairs["nchw"]
    with pytest.raises(RuntimeError, match="is a SAM decoder: swap BACKDROP_SAM_CHECKPOINT"):
        load_onnx_sam(decoder, encoder)
    with pytest.raises(RuntimeError, match=r"is not SAM's decoder export \(it lacks image_embeddings, point_coords"):
        load_onnx_sam(encoder, encoder)
    with pytest.raises(RuntimeError, match=r"SAM ONNX decoder .*missing\.onnx does not exist"):
        load_onnx_sam(encoder, tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match=r"SAM ONNX encoder .*junk\.onnx is not a readable ONNX model"):
        load_onnx_sam(tmp_path / "junk.onnx", decoder)


def test_settings_choose_the_onnx_pair(tmp_path, onnx_pairs):
    encoder, decoder = onnx_pairs["nchw"]
    settings = Settings(sam_model_type="vit_b_onnx", sam_checkpoint=encoder, sam_decoder=decoder, device="cpu")
    assert sam_status(settings) == "SAM vit_b_onnx on cpu (loads on the first click)"
    predictor, notices = get_predictor(settings)
    assert isinstance(predictor, OnnxMaskPredictor) and notices == [] and predictor.variant == "vit_b_onnx"
    assert get_predictor(settings)[0] is predictor  # the one cache
    assert sam_status(settings) == "SAM vit_b_onnx on cpu"
    # Defaults: rembg's file names in the checkpoint folder; the decoder setting is for ONNX only.
    default = Settings(sam_model_type="vit_l_onnx", checkpoint_dir=tmp_path)
    assert default.sam_checkpoint == tmp_path / "sam_vit_l_0b3195.encoder.quant.onnx"
    assert default.sam_decoder == tmp_path / "sam_vit_l_0b3195.decoder.quant.onnx"
    env = Settings.from_env({"BACKDROP_SAM_MODEL_TYPE": "vit_b_onnx", "BACKDROP_SAM_DECODER": str(decoder)})
    assert env.sam_is_onnx and env.sam_decoder == decoder
    with pytest.raises(ValueError, match="BACKDROP_SAM_DECODER is read by the ONNX SAM variants only"):
        Settings(sam_model_type="vit_b", sam_decoder=decoder)


def test_the_pair_downloads_with_md5_and_says_what_is_missing_offline(tmp_path, monkeypatch, onnx_pairs):
    files = {p.name: p.read_bytes() for p in onnx_pairs["nchw"]}
    encoder, decoder = (f"sam_test.{part}.onnx" for part in ("encoder", "decoder"))
    served = {encoder: files["encoder_nchw.onnx"], decoder: files["decoder_0.onnx"]}
    for name, data in served.items():
        monkeypatch.setitem(downloads.SAM_DOWNLOADS, name, (f"md5:{hashlib.md5(data).hexdigest()}", len(data)))
        monkeypatch.setitem(downloads.SAM_ONNX_DOWNLOADS, name, downloads.SAM_DOWNLOADS[name])
    server = FileServer(served)
    try:
        def settings(auto=True, base=server.url):
            return Settings(sam_model_type="vit_b_onnx", sam_checkpoint=tmp_path / encoder,
                            sam_decoder=tmp_path / decoder, sam_onnx_download_base=base,
                            sam_download_base="http://127.0.0.1:9/", sam_auto_download=auto, device="cpu")

        size = downloads.format_size(sum(map(len, served.values())))
        assert sam_status(settings(auto=False)) == (
            f"Masks without SAM: no SAM checkpoint at {tmp_path / encoder} and {tmp_path / decoder} "
            f"(put {encoder} and {decoder} in {tmp_path}/, or run `python -m pipelines download sam`: {size})")
        assert sam_status(settings()) == f"SAM vit_b_onnx on cpu (downloads {encoder} and {decoder}, {size}, on the first click)"
        predictor, notices = get_predictor(settings())
        assert isinstance(predictor, OnnxMaskPredictor) and notices == []
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(served) and server.hits == 2
        # A damaged file is caught by its MD5.
        (tmp_path / decoder).unlink()
        monkeypatch.setitem(downloads.SAM_DOWNLOADS, decoder, ("md5:" + "0" * 32, len(served[decoder])))
        predictor, notices = get_predictor(settings())
        assert predictor is None and f"downloaded {decoder} is damaged: its MD5 starts with" in notices[0]
    finally:
        server.close()


def test_a_download_the_server_restarts_is_hashed_from_zero(tmp_path):
    """A server that ignores Range sends the whole file again: the hash starts over with it."""
    import http.server
    import threading

    data = bytes(range(256)) * 64

    class WholeFile(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WholeFile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "f.bin.part").write_bytes(data[:1000])  # an interrupted download's first bytes
        url = f"http://127.0.0.1:{server.server_address[1]}/f.bin"
        for checksum in (hashlib.sha256(data).hexdigest()[:8], f"md5:{hashlib.md5(data).hexdigest()}"):
            path = downloads.download_checkpoint(url, tmp_path / "f.bin", checksum, len(data))
            assert path.read_bytes() == data
            path.unlink()
            (tmp_path / "f.bin.part").write_bytes(data[:1000])
    finally:
        server.shutdown()
        server.server_close()
