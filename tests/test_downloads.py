"""Model downloads: a SAM checkpoint resumed after an interruption (HTTP Range on 127.0.0.1), SDXL
found in the local hub cache without the network, one fast line when it is neither cached nor
reachable (run_edit and the command line), and `python -m pipelines download`."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from app_server import free_port as closed_port
from conftest import half_mask, make_photo, run_cli
from file_server import FileServer

from pipelines.entry import cli
from pipelines import downloads
from pipelines.masks import subject
from pipelines.downloads import download_checkpoint, sdxl_folder
from pipelines.editing import run_edit
from pipelines.diffusion.sdxl_models import load_sdxl
from pipelines.settings import Settings
from pipelines.types import EditRequest

HUB_ID = "backdrop-tests/sdxl-not-here"


# ----------------------------------------------------------------------------------------------
# SAM: resumable
# ----------------------------------------------------------------------------------------------
def test_interrupted_sam_download_resumes_where_it_stopped(tmp_path):
    data = bytes(np.random.default_rng(0).integers(0, 256, 3_000_000, dtype=np.uint8))
    prefix = hashlib.sha256(data).hexdigest()[:6]
    server = FileServer({"sam.pth": data}, cut_after=1_200_000)
    dest = tmp_path / "sam.pth"
    try:
        with pytest.raises(RuntimeError, match=r"stopped at 1200000 of 3000000 bytes.*run again to resume"):
            download_checkpoint(server.url + "sam.pth", dest, prefix, len(data))
        assert not dest.exists() and (tmp_path / "sam.pth.part").stat().st_size == 1_200_000

        progress = []
        assert download_checkpoint(server.url + "sam.pth", dest, prefix, len(data),
                                   on_progress=lambda d, t: progress.append((d, t))) == dest
        assert server.ranges == [None, "bytes=1200000-"]  # the second request asked for the rest only
        assert server.sent == [1_200_000, 1_800_000]
        assert progress[0][0] > 1_200_000 and progress[-1] == (3_000_000, 3_000_000)
        assert dest.read_bytes() == data and [p.name for p in tmp_path.iterdir()] == ["sam.pth"]
    finally:
        server.close()


def test_a_damaged_partial_file_is_caught_by_the_hash_and_removed(tmp_path):
    data = bytes(range(256)) * 4000
    prefix = hashlib.sha256(data).hexdigest()[:6]
    (tmp_path / "sam.pth.part").write_bytes(b"\0" * 1000)  # not the file's first 1000 bytes
    server = FileServer({"sam.pth": data})
    try:
        with pytest.raises(RuntimeError, match=rf"downloaded sam.pth is damaged: its SHA-256 starts with "
                                               rf"[0-9a-f]{{6}}, expected {prefix}"):
            download_checkpoint(server.url + "sam.pth", tmp_path / "sam.pth", prefix, len(data))
        assert server.ranges == ["bytes=1000-"] and list(tmp_path.iterdir()) == []
        assert download_checkpoint(server.url + "sam.pth", tmp_path / "sam.pth", prefix, len(data)).read_bytes() == data
    finally:
        server.close()


# ----------------------------------------------------------------------------------------------
# SDXL: local cache first, one fast line offline
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    """The hub at a closed port on 127.0.0.1, offline mode off, an empty cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(downloads, "_RESOLVED", {})
    return tmp_path / "hub"


def test_sdxl_neither_cached_nor_reachable_is_one_line_at_once(unreachable_hub, tiny_settings):
    settings = dataclasses.replace(tiny_settings, sdxl_model=HUB_ID)
    photo = make_photo()
    mask = half_mask(photo)
    started = time.perf_counter()
    with pytest.raises(RuntimeError) as info:
        run_edit(EditRequest(image=photo, mask=mask, prompt="a forest", num_inference_steps=2), settings)
    elapsed = time.perf_counter() - started
    message = str(info.value)
    assert "\n" not in message and elapsed < 10, (elapsed, message)
    assert message.startswith(f"SDXL {HUB_ID} is not downloaded and the Hugging Face hub cannot be reached (")
    assert message.endswith("set BACKDROP_SDXL_MODEL=/local/folder, or run `python -m pipelines download sdxl` "
                            "once with internet")
    assert downloads.sdxl_missing(settings) == (f"SDXL {HUB_ID} is not downloaded yet: run `python -m pipelines "
                                                "download sdxl`, or it downloads on the first Generate")


def test_sdxl_unreachable_from_the_command_line_exits_1_with_one_line(tiny_env, tmp_path):
    photo = tmp_path / "photo.png"
    make_photo().save(photo)
    env = {k: v for k, v in tiny_env.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(BACKDROP_SDXL_MODEL=HUB_ID, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
               HF_HOME=str(tmp_path / "hf"))
    mask = tmp_path / "mask.png"
    from PIL import Image

    half = Image.new("L", (160, 120), 0)
    half.paste(255, (80, 0, 160, 120))
    half.save(mask)
    done = run_cli(["edit", str(photo), "--mask", str(mask), "--prompt", "a forest", "--steps", "2"], env, tmp_path,
                   timeout=180)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: SDXL {HUB_ID} is not downloaded and the Hugging "
                                                   "Face hub cannot be reached"), done.stderr
    # huggingface_hub logs "Retrying in 8s [Retry 4/5]" for each back-off (4 minutes of them before);
    # the time itself is asserted in-process above, where importing diffusers does not count.
    assert "Retrying" not in done.stderr


def _cache_snapshot(hub: Path, repo: str, source: Path, fp16: bool) -> Path:
    """Lay out `source` in the hub cache as huggingface_hub does (refs/main -> snapshots/<sha>)."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    storage = hub / f"models--{repo.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(sha)
    snapshot = storage / "snapshots" / sha
    shutil.copytree(source, snapshot)
    if fp16:  # as `download sdxl` fetches it: only the fp16 variant of each weights file
        for part, stem in downloads.SDXL_WEIGHTS.items():
            plain = snapshot / part / f"{stem}.safetensors"
            plain.rename(plain.with_name(f"{stem}.fp16.safetensors"))
    return snapshot


def test_sdxl_in_the_local_cache_is_used_without_the_network(unreachable_hub, tiny_sdxl_dir):
    snapshot = _cache_snapshot(unreachable_hub, HUB_ID, tiny_sdxl_dir, fp16=True)
    settings = Settings(sdxl_model=HUB_ID, device="cpu")
    assert downloads.sdxl_missing(settings) is None
    assert sdxl_folder(settings, tokenizers_only=True) == snapshot
    assert sdxl_folder(settings) == snapshot
    assert downloads.weights_variant(snapshot) == "fp16" and downloads.weights_variant(tiny_sdxl_dir) is None
    cached, plain = load_sdxl(str(snapshot)), load_sdxl(str(tiny_sdxl_dir))  # the fp16-named files load
    assert all(torch.equal(a, b) for a, b in zip(cached.unet.state_dict().values(), plain.unet.state_dict().values()))


def test_an_incomplete_cache_is_not_taken_for_the_model(unreachable_hub, tiny_sdxl_dir):
    snapshot = _cache_snapshot(unreachable_hub, HUB_ID, tiny_sdxl_dir, fp16=False)
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors").unlink()  # an interrupted download
    settings = Settings(sdxl_model=HUB_ID, device="cpu")
    assert sdxl_folder(settings, tokenizers_only=True) == snapshot  # the tokenizers are all there
    with pytest.raises(RuntimeError, match="the Hugging Face hub cannot be reached"):
        sdxl_folder(settings)


def test_sdxl_files_prefer_fp16_where_the_repository_has_them():
    sizes = {"model_index.json": 1, "scheduler/scheduler_config.json": 1, "tokenizer/vocab.json": 1,
             "tokenizer_2/vocab.json": 1, "unet/config.json": 1, "unet/diffusion_pytorch_model.safetensors": 10,
             "unet/diffusion_pytorch_model.fp16.safetensors": 5, "vae/config.json": 1,
             "vae/diffusion_pytorch_model.safetensors": 4, "text_encoder/config.json": 1,
             "text_encoder/model.fp16.safetensors": 2, "text_encoder_2/config.json": 1,
             "text_encoder_2/model.fp16.safetensors": 3, "vae_1_0/config.json": 1, "sd_xl_base_1.0.safetensors": 70}
    assert downloads._sdxl_files(sizes, tokenizers_only=False) == sorted([
        "model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer_2/vocab.json",
        "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
        "text_encoder_2/config.json", "text_encoder_2/model.fp16.safetensors"])
    assert downloads._sdxl_files(sizes, tokenizers_only=True) == ["tokenizer/vocab.json", "tokenizer_2/vocab.json"]


def test_sizes_for_people():
    assert downloads.format_progress(2_100_000_000, 6_940_000_000) == "2.1 / 6.9 GB"
    assert downloads.format_progress(5_000_000, 375_042_383) == "5.0 / 375.0 MB"
    assert downloads.format_size(2_564_550_879) == "2.6 GB" and downloads.format_size(375_042_383) == "375 MB"


# ----------------------------------------------------------------------------------------------
# python -m pipelines download
# ----------------------------------------------------------------------------------------------
def test_download_command_fetches_sam_and_reports_sdxl(tmp_path, monkeypatch, capsys, tiny_sdxl_dir,
                                                       unreachable_hub):
    data = b"a checkpoint" * 1000
    prefix = hashlib.sha256(data).hexdigest()[:6]
    name = f"sam_test_{prefix}.pth"
    monkeypatch.setitem(downloads.SAM_DOWNLOADS, name, (prefix, len(data)))
    model = b"a subject model" * 100  # "all" fetches the subject model too (served here as u2netp)
    server = FileServer({name: data, "u2netp.onnx": model})
    monkeypatch.setitem(subject.SUBJECT_MODEL_FILES, "u2netp", subject.SubjectModelFile(
        f"{server.url.rsplit('/', 1)[0]}/u2netp.onnx", "md5:" + hashlib.md5(model).hexdigest(), len(model)))
    dest = tmp_path / "ckpt" / name
    settings = ["--sam-checkpoint", str(dest), "--sam-download-base", server.url.rsplit("/", 1)[0],
                "--no-sam-auto-download", "--sdxl-model", str(tiny_sdxl_dir), "--subject-model", "u2netp",
                "--checkpoint-dir", str(tmp_path / "ckpt")]
    try:
        assert cli.main(["download", "all", *settings]) == 0  # fetched though auto-download is off
    finally:
        server.close()
    assert dest.read_bytes() == data
    fetched = tmp_path / "ckpt" / "rembg" / "u2netp.onnx"
    assert fetched.read_bytes() == model
    assert capsys.readouterr().out.splitlines() == [f"SAM: {dest}", f"subject model: {fetched}", f"SDXL: {tiny_sdxl_dir}"]

    assert cli.main(["download", "sdxl", "--sdxl-model", HUB_ID]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: SDXL {HUB_ID} is not downloaded and the Hugging Face hub cannot be reached")
    assert "\n" not in err
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # the rest of the suite stays offline
