"""Shared fixtures: tiny models saved to disk and loaded back by the app's own loaders, a fake Ollama
server on loopback, and settings that point the app at them. Nothing here downloads anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tests never reach a model hub; a loader that tries must fail fast instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("BACKDROP_SUBJECT_AUTO_DOWNLOAD", "0")  # the subject model too

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent))

from app_server import AppServer  # noqa: E402
from cold import (  # noqa: E402,F401  (light helpers, re-exported for the tests)
    LLAMA_PROMPT, LLAVA_MOOD, TINY_WORKING_PIXELS, half_mask, make_photo, make_tiny_settings, start_fake_ollama)
from tiny_models import build_clip_tokenizer, register_tiny_sam, save_tiny_sam, save_tiny_sdxl  # noqa: E402

from pipelines.settings import Settings  # noqa: E402

register_tiny_sam()  # the test-only SAM variant "tiny", in the registry like vit_h, vit_l, vit_b
# ... and in the processes the tests start that keep this PYTHONPATH (Ray workers): see tests/site.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS / "site"), os.environ.get("PYTHONPATH")]))



@pytest.fixture(scope="session")
def clip_tokenizers():
    """SDXL's two tokenizers with the real CLIP vocabulary (the second pads with "!")."""
    return build_clip_tokenizer(), build_clip_tokenizer(pad_token="!")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    """A tiny SDXL pipeline folder in diffusers format."""
    return save_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_sam_checkpoint(tmp_path_factory) -> Path:
    """A tiny SAM checkpoint (a state dict, like the official .pth files)."""
    return save_tiny_sam(tmp_path_factory.mktemp("models") / "sam_tiny.pth")


@pytest.fixture
def fake_ollama():
    """A fake Ollama server on 127.0.0.1 with `llava` and `llama2` scripted to answer."""
    server = start_fake_ollama()
    yield server
    server.stop()


@pytest.fixture
def tiny_settings(tmp_path, tiny_sdxl_dir, tiny_sam_checkpoint, fake_ollama) -> Settings:
    """Settings that point every stage at the tiny models, the fake Ollama and temp folders."""
    return make_tiny_settings(tmp_path, tiny_sdxl_dir, tiny_sam_checkpoint, fake_ollama.url)


def app_env(s: Settings) -> dict:
    """Environment variables that point `python app.py` / `python -m pipelines` at `s`'s models."""
    env = dict(os.environ)
    env.update({
        "BACKDROP_SDXL_MODEL": s.sdxl_model, "BACKDROP_SAM_CHECKPOINT": str(s.sam_checkpoint),
        "BACKDROP_SAM_AUTO_DOWNLOAD": "0", "BACKDROP_CHECKPOINT_DIR": str(s.checkpoint_dir),
        "BACKDROP_OUTPUT_DIR": str(s.output_dir), "OLLAMA_HOST": s.ollama_host,
        "BACKDROP_OLLAMA_TIMEOUT": str(s.ollama_timeout), "BACKDROP_DEVICE": "cpu",
        "BACKDROP_WORKING_PIXELS": str(s.working_pixels), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
        # tests/site/sitecustomize.py registers the tiny SAM variant in the started process; the
        # settings keep vit_h, and the checkpoint loads as the variant it is, with a notice.
        "PYTHONPATH": env["PYTHONPATH"],  # holds tests/site (above)
    })
    return env


@pytest.fixture
def tiny_env(tiny_settings) -> dict:
    """Environment variables that point `python app.py` / `python -m pipelines` at the tiny models."""
    return app_env(tiny_settings)


@pytest.fixture
def app_url(tiny_env, tmp_path):
    """The URL of the real `python app.py` started with `tiny_env` (a module may override `tiny_env`)."""
    app = AppServer(tiny_env, tmp_path / "app.log")
    if (failed := app.wait()) is not None:
        pytest.fail(failed)
    yield app.url
    app.stop()


def run_cli(args: list[str], env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m pipelines *args` from `cwd` with `env` (as from `app_env`), output captured as text.

    The package is found from the repository, as after a clone; the env's PYTHONPATH is kept, since it
    holds tests/site, which registers the tiny SAM variant in the started process.
    """
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS.parent), env.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "pipelines", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
