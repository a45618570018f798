"""A random SDXL LoRA built in code and saved as diffusers saves LoRAs, for the Fast-preset tests and
the benchmark (the real few-step LoRAs are hundreds of MB and cannot be downloaded here); and the
tiny UNet's output on fixed inputs, to compare weights by what they compute."""

from __future__ import annotations

from pathlib import Path

import torch


def save_random_lora(unet, path: Path, rank: int = 4, seed: int = 0, std: float = 0.05,
                     target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")) -> Path:
    """Save a LoRA with random A and B matrices for `unet`'s attention projections to `path`.

    `unet` is left as it was (the adapter is added, read and removed again). Seeded: the same
    arguments give the same file.
    """
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(target_modules)), adapter_name="random")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name="random"))
    layers = {key: value.detach().cpu().contiguous() for key, value in layers.items()}
    unet.unload_lora()  # back to the plain layers, weights untouched
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(path.parent, unet_lora_layers=layers, weight_name=path.name)
    return path


def tiny_unet_output(unet) -> torch.Tensor:
    """The tiny SDXL UNet (tests/tiny_models.py) on fixed random inputs: (2, 4, 16, 16) float32."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 16, 16, generator=generator)
    conditions = {"text_embeds": torch.randn(2, 32, generator=generator), "time_ids": torch.randn(2, 6, generator=generator)}
    with torch.no_grad():
        return unet(sample, torch.tensor(500.0), encoder_hidden_states=torch.randn(2, 77, 64, generator=generator),
                    added_cond_kwargs=conditions).sample
