"""Test helpers that import nothing heavy (no torch, no diffusers), for the tests and for child
processes that must start cold (tests/first_edit_child.py). conftest re-exports them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fake_ollama import FakeOllama

from pipelines.settings import Settings

if TYPE_CHECKING:  # PIL is imported where a photo is made
    from PIL import Image

TINY_WORKING_PIXELS = 128 * 128  # latents of 16x16: fast on a CPU

LLAVA_MOOD = "Stylish, modern, contemporary"  # what the fake llava answers
LLAMA_PROMPT = "misty pine forest at dawn, soft light, award winning photograph"  # and the fake llama2


def start_fake_ollama() -> FakeOllama:
    """A fake Ollama server on 127.0.0.1 with `llava` and `llama2` scripted to answer."""
    server = FakeOllama().start()
    server.script("llava", text=LLAVA_MOOD)
    server.script("llama2", text=LLAMA_PROMPT)
    return server


def make_tiny_settings(folder: Path, sdxl_dir: Path, sam_checkpoint: Path, ollama_url: str) -> Settings:
    """Settings that point every stage at the tiny models, a fake Ollama and folders under `folder`."""
    return Settings(
        sdxl_model=str(sdxl_dir),
        sam_checkpoint=sam_checkpoint,
        sam_model_type="tiny",
        sam_auto_download=False,
        checkpoint_dir=folder / "checkpoints",
        output_dir=folder / "outputs",
        ollama_host=ollama_url,
        ollama_timeout=10.0,
        device="cpu",
        working_pixels=TINY_WORKING_PIXELS,
    )


def make_photo(width: int = 160, height: int = 120, seed: int = 0, color=(200, 60, 40)) -> "Image.Image":
    """A synthetic photo: a textured background with a solid disk (the subject) in the middle."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    background = np.stack([(xx * 255 // width), (yy * 255 // height), np.full_like(xx, 90)], -1)
    background = np.clip(background + rng.integers(-25, 25, (height, width, 3)), 0, 255)
    radius = min(width, height) // 4
    disk = (xx - width // 2) ** 2 + (yy - height // 2) ** 2 <= radius**2
    background[disk] = color
    return Image.fromarray(background.astype(np.uint8), "RGB")


def half_mask(photo):
    """A float32 (H, W) mask of `photo`'s size that repaints the right half (1) and keeps the left (0)."""
    import numpy as np

    mask = np.zeros((photo.height, photo.width), np.float32)
    mask[:, photo.width // 2:] = 1.0
    return mask
