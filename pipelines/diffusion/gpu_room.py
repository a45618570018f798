"""Room on the GPU for SDXL, when Ollama shares the card.

Ollama keeps LLaVA and Llama 2 loaded for `keep_alive` (10 minutes by default), about 4-5 GB each,
on the same GPU SDXL needs: on a 12-16 GB card the edit would run out of memory. So before
diffusion on CUDA, `make_room` compares the memory this process can still get with what SDXL needs
for the edit (`measure_room`, an estimate), and when it is short asks Ollama to unload its models
(`OllamaClient.unload`: keep_alive 0). `BACKDROP_OLLAMA_UNLOAD` says when: auto (when short),
always, or never. The decision takes its numbers as a `Room`, so it is tested without a GPU.

    room = measure_room("cuda", (1024, 1024), sld=True, offload=False, tiling=False)
    notices = make_room(client, "auto", room)   # ["unloaded llava:latest, llama2:latest from the GPU ..."]
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pipelines import prompting

GB = 1024**3

# SDXL base in float16: UNet 2.57 B parameters, CLIP ViT-L 123 M + OpenCLIP bigG 695 M; the VAE
# (84 M) stays in float32 because it overflows in float16.
UNET_BYTES = int(2.57e9 * 2)
TEXT_ENCODER_BYTES = int(0.818e9 * 2)
VAE_BYTES = int(84e6 * 4)
# Activations per megapixel of working size, measured orders of magnitude on SDXL with PyTorch SDPA:
# the UNet per batch slot (uncond, cond, SLD concept), the float32 VAE decode of one image.
UNET_ACTIVATION_PER_MP_SLOT = int(0.6 * GB)
VAE_DECODE_PER_MP = int(3.0 * GB)
VAE_TILED_DECODE = int(1.0 * GB)  # tiles of 512 px: about constant
MARGIN = int(0.5 * GB)  # allocator fragmentation, the scheduler's and the previews' small tensors


@dataclass(frozen=True)
class Room:
    """GPU memory for one edit, in bytes."""

    free: int  # what this process can still get: free on the card plus what torch caches unused
    needed: int  # what SDXL still needs for this edit beyond what this process holds already

    @property
    def short(self) -> bool:
        return self.free < self.needed


def sdxl_bytes(size: tuple[int, int], *, sld: bool, offload: bool, tiling: bool) -> int:
    """An estimate of SDXL's peak GPU memory for one edit (candidates run one after another).

    Args:
        size: the working size (width, height) in pixels.
        sld: Safe Latent Diffusion on (a third UNet batch slot).
        offload: CPU offload: only the running model sits on the GPU, the UNet being the largest.
        tiling: the VAE decodes tile by tile.
    """
    megapixels = size[0] * size[1] / 1e6
    weights = UNET_BYTES if offload else UNET_BYTES + TEXT_ENCODER_BYTES + VAE_BYTES
    unet = UNET_ACTIVATION_PER_MP_SLOT * megapixels * (3 if sld else 2)
    decode = VAE_TILED_DECODE if tiling else VAE_DECODE_PER_MP * megapixels
    # The UNet's activations are freed before the VAE decodes: the peak is the larger of the two.
    return int(weights + max(unet, decode) + MARGIN)


def measure_room(device: str, size: tuple[int, int], *, sld: bool, offload: bool, tiling: bool) -> Room:
    """The room on a CUDA `device` for an edit at `size` (see `sdxl_bytes`), measured now."""
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    reserved, allocated = torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device)
    # What torch holds (SDXL's weights once loaded) is already ours; its unused cache is ours to reuse.
    return Room(free=free + reserved - allocated,
                needed=max(0, sdxl_bytes(size, sld=sld, offload=offload, tiling=tiling) - allocated))


def make_room(client, mode: str, room: Room, *, wait: float = 10.0) -> list[str]:
    """Ask Ollama to unload the models it holds on the GPU, if `mode` and `room` say so.

    Args:
        client: a `prompting.OllamaClient`.
        mode: "auto" (only when `room.short`), "always" or "never" (Settings.ollama_unload).
        room: the memory this process can get and what the edit needs.
        wait: seconds to wait for Ollama to list the models as gone (it frees them in the background).

    Returns:
        Notices for the page: what was unloaded and why, or why nothing could be; [] when nothing
        was to do. An Ollama that cannot be reached is a notice, never an error: the edit goes on.
    """
    if mode == "never" or (mode == "auto" and not room.short):
        return []
    try:
        on_gpu = _on_gpu(client)
        if not on_gpu:
            return []
        client.unload(list(on_gpu))
        deadline = time.monotonic() + wait
        while set(on_gpu) & set(client.loaded()) and time.monotonic() < deadline:
            time.sleep(0.2)
    except prompting.OllamaUnavailable as exc:
        return [f"could not ask Ollama to free GPU memory for SDXL: {exc}"]
    why = (f"SDXL needs about {room.needed / GB:.1f} GB, {room.free / GB:.1f} GB were free"
           if mode == "auto" else "BACKDROP_OLLAMA_UNLOAD=always")
    return [f"unloaded {', '.join(on_gpu)} from the GPU ({sum(on_gpu.values()) / GB:.1f} GB) to make room "
            f"for SDXL ({why}); Ollama loads them again on the next mood or prompt"]


def make_room_for_edit(settings, size: tuple[int, int], *, sld: bool) -> list[str]:
    """`make_room` before an edit's diffusion at the working `size`, on CUDA only; returns notices."""
    import torch

    device = settings.resolve_device()
    if torch.device(device).type != "cuda" or settings.ollama_unload == "never":
        return []
    room = measure_room(device, size, sld=sld, offload=settings.cpu_offload, tiling=settings.vae_tiling)
    return make_room(prompting.make_client(settings.ollama_host, settings.ollama_timeout),
                     settings.ollama_unload, room)


def oom_hint(client) -> str:
    """A sentence for an out-of-memory error when Ollama holds models on the GPU, else ""."""
    try:
        on_gpu = _on_gpu(client)
    except prompting.OllamaUnavailable:
        return ""
    if not on_gpu:
        return ""
    return (f"Ollama holds {', '.join(on_gpu)} on the GPU ({sum(on_gpu.values()) / GB:.1f} GB): "
            "set BACKDROP_OLLAMA_UNLOAD=always, or `ollama stop` them")


def _on_gpu(client) -> dict[str, int]:
    """The models Ollama has loaded with some of them in GPU memory: name -> bytes there."""
    return {name: vram for name, vram in client.loaded().items() if vram > 0}
