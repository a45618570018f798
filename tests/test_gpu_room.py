"""Room on the GPU: Ollama is asked to unload its models (keep_alive 0) when SDXL would not fit."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import half_mask, make_photo

from pipelines import editing, prompting
from pipelines.diffusion import blending, gpu_room
from pipelines.diffusion.gpu_room import GB, Room
from pipelines.types import EditRequest

SHORT = Room(free=6 * GB, needed=10 * GB)
AMPLE = Room(free=40 * GB, needed=10 * GB)


def _unloads(fake) -> list[dict]:
    return [b for b in fake.bodies("/api/generate") if b.get("keep_alive") == 0 and not b.get("prompt")]


@pytest.fixture
def client(fake_ollama):
    fake_ollama.loaded.update({"llava:latest": int(4.5 * GB), "llama2:latest": int(3.5 * GB)})
    return prompting.make_client(fake_ollama.url, 5.0)


def test_short_memory_unloads_every_model_on_the_gpu(fake_ollama, client):
    fake_ollama.loaded["nomic-embed-text:latest"] = 0  # on the CPU: holds no GPU memory, stays
    notices = gpu_room.make_room(client, "auto", SHORT)
    assert sorted(b["model"] for b in _unloads(fake_ollama)) == ["llama2:latest", "llava:latest"]
    assert fake_ollama.loaded == {"nomic-embed-text:latest": 0}
    assert notices == ["unloaded llava:latest, llama2:latest from the GPU (8.0 GB) to make room for SDXL "
                       "(SDXL needs about 10.0 GB, 6.0 GB were free); Ollama loads them again on the "
                       "next mood or prompt"]


@pytest.mark.parametrize("mode, room", [("auto", AMPLE), ("never", SHORT)])
def test_ample_memory_or_never_sends_no_unload(fake_ollama, client, mode, room):
    assert gpu_room.make_room(client, mode, room) == []
    assert _unloads(fake_ollama) == []
    assert len(fake_ollama.loaded) == 2


def test_always_unloads_even_with_ample_memory(fake_ollama, client):
    notices = gpu_room.make_room(client, "always", AMPLE)
    assert len(_unloads(fake_ollama)) == 2 and fake_ollama.loaded == {}
    assert "BACKDROP_OLLAMA_UNLOAD=always" in notices[0]


def test_nothing_loaded_or_ollama_down_is_no_error(fake_ollama, client):
    fake_ollama.loaded.clear()
    assert gpu_room.make_room(client, "auto", SHORT) == []
    down = prompting.make_client("http://127.0.0.1:9", 2.0)  # nothing listens on the discard port
    [notice] = gpu_room.make_room(down, "auto", SHORT)
    assert notice.startswith("could not ask Ollama to free GPU memory for SDXL: Ollama is not running")


def test_room_is_short_when_free_is_below_needed():
    assert Room(free=5, needed=6).short and not Room(free=6, needed=6).short


def test_sdxl_estimate_grows_with_size_and_sld_and_shrinks_with_offload_and_tiling():
    one = gpu_room.sdxl_bytes((1024, 1024), sld=False, offload=False, tiling=False)
    # weights 5.14 + 1.64 + 0.34 GB, the float32 decode of 1.05 MP at 3 GB/MP, the margin
    assert one == pytest.approx(gpu_room.UNET_BYTES + gpu_room.TEXT_ENCODER_BYTES + gpu_room.VAE_BYTES
                                + 3.0 * GB * 1.048576 + 0.5 * GB, abs=2)
    assert 10 * GB < one < 11 * GB
    tiled = gpu_room.sdxl_bytes((1024, 1024), sld=True, offload=True, tiling=True)
    # offload keeps only the UNet; tiled decode is small, so SLD's three UNet slots are the peak
    assert tiled == pytest.approx(gpu_room.UNET_BYTES + 0.6 * GB * 1.048576 * 3 + 0.5 * GB, abs=2)
    assert gpu_room.sdxl_bytes((2048, 2048), sld=False, offload=False, tiling=False) > one


def test_no_unload_on_the_cpu(tiny_settings, fake_ollama, client):
    assert tiny_settings.resolve_device() == "cpu"
    settings = dataclasses.replace(tiny_settings, ollama_unload="always")
    assert gpu_room.make_room_for_edit(settings, (128, 128), sld=False) == []
    assert _unloads(fake_ollama) == []


def test_out_of_memory_names_ollama_when_it_holds_gpu_memory(tiny_settings, fake_ollama, client, monkeypatch):
    photo = make_photo()
    mask = half_mask(photo)
    request = EditRequest(image=photo, mask=mask, prompt="a forest", num_inference_steps=1, seed=1)

    def out_of_memory(*args, **kwargs):
        raise blending.GpuOutOfMemory("GPU out of memory at 128x128 with 1 candidate(s): try fewer candidates")

    monkeypatch.setattr(blending, "blend", out_of_memory)
    with pytest.raises(blending.GpuOutOfMemory) as info:
        editing.run_edit(request, tiny_settings, save=False)
    assert str(info.value) == ("GPU out of memory at 128x128 with 1 candidate(s): try fewer candidates. Ollama "
                               "holds llava:latest, llama2:latest on the GPU (8.0 GB): set "
                               "BACKDROP_OLLAMA_UNLOAD=always, or `ollama stop` them")
    assert isinstance(info.value.__cause__, blending.GpuOutOfMemory)
    fake_ollama.loaded.clear()
    with pytest.raises(blending.GpuOutOfMemory) as info:
        editing.run_edit(request, tiny_settings, save=False)
    assert "Ollama" not in str(info.value)
