"""Tiny models built in code, saved to a folder, and loaded back by the app's own loaders.

- `build_clip_tokenizer`: the REAL CLIP BPE tokenizer (vocabulary 49408), built offline from the
  vocabulary file that ships inside open-clip-torch. SDXL's second tokenizer pads with "!".
- `save_tiny_sdxl`: an SDXL pipeline folder (diffusers format) with the real tokenizers, two tiny CLIP
  text encoders (the second with a projection, like SDXL's), a 4-block VAE so latents are 1/8 of the
  image as in SDXL, and a tiny UNet with SDXL's `text_time` added conditions.
- `save_tiny_sam`: a small Segment Anything model built from `segment_anything.modeling` classes,
  saved as a plain state-dict checkpoint like the official ones; `register_tiny_sam` adds its
  builder to `pipelines.masks.sam_models.SAM_VARIANTS` as "tiny", as any other variant is registered.

Everything is seeded, so two builds give identical weights.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

import torch


def _bpe_path() -> Path:
    import open_clip

    return Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2 / CLIP byte-to-unicode table (as in open_clip.tokenizer)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@lru_cache(maxsize=1)
def clip_vocab_files() -> tuple[str, str]:
    """Write CLIP's vocab.json and merges.txt (as openai/clip-vit-large-patch14 has them) to a cache dir."""
    import tempfile

    out = Path(tempfile.gettempdir()) / "backdrop-clip-vocab"
    vocab_file, merges_file = out / "vocab.json", out / "merges.txt"
    if vocab_file.exists() and merges_file.exists():
        return str(vocab_file), str(merges_file)
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return str(vocab_file), str(merges_file)


def build_clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """The real CLIP tokenizer; `pad_token="!"` gives SDXL's `tokenizer_2`."""
    from transformers import CLIPTokenizer

    vocab_file, merges_file = clip_vocab_files()
    return CLIPTokenizer(vocab_file, merges_file, model_max_length=77, pad_token=pad_token)


def tiny_text_encoder_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32, hidden_act="gelu",
        layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )


def build_tiny_sdxl_components() -> dict:
    """The components of a tiny SDXL pipeline, seeded (like diffusers' `get_dummy_components`)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 time ids x 8 + pooled text (32)
        cross_attention_dim=64,  # penultimate states of both encoders, concatenated (32 + 32)
        norm_num_groups=1,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", interpolation_type="linear", prediction_type="epsilon",
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16, 16), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=128,
        scaling_factor=0.13025, force_upcast=True,  # as SDXL's VAE
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(tiny_text_encoder_config())
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(tiny_text_encoder_config())
    return {
        "unet": unet, "scheduler": scheduler, "vae": vae,
        "text_encoder": text_encoder, "tokenizer": build_clip_tokenizer(),
        "text_encoder_2": text_encoder_2, "tokenizer_2": build_clip_tokenizer(pad_token="!"),
    }


def save_tiny_sdxl(path: Path) -> Path:
    """Save a tiny SDXL pipeline folder in diffusers format; returns `path`."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**build_tiny_sdxl_components(), force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)


# The tiny SAM: the real classes at a small size. The official models use 1024-pixel inputs,
# 16-pixel patches and 256-channel prompts; this one uses 256, 16 and 32.
TINY_SAM = dict(img_size=256, patch_size=16, embed_dim=32, depth=2, num_heads=2, window_size=4,
                global_attn_indexes=(1,), prompt_embed_dim=32)


def build_tiny_sam():
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    c = TINY_SAM
    torch.manual_seed(0)
    grid = c["img_size"] // c["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=c["img_size"], patch_size=c["patch_size"], embed_dim=c["embed_dim"], depth=c["depth"],
            num_heads=c["num_heads"], mlp_ratio=4, out_chans=c["prompt_embed_dim"], qkv_bias=True,
            use_rel_pos=True, window_size=c["window_size"], global_attn_indexes=c["global_attn_indexes"],
            norm_layer=lambda n: torch.nn.LayerNorm(n, eps=1e-6),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=c["prompt_embed_dim"], image_embedding_size=(grid, grid),
            input_image_size=(c["img_size"], c["img_size"]), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=c["prompt_embed_dim"], mlp_dim=64, num_heads=2),
            transformer_dim=c["prompt_embed_dim"], iou_head_depth=3, iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def save_tiny_sam(path: Path) -> Path:
    """Save the tiny SAM's state dict to `path` (a .pth file, like the official checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_tiny_sam().state_dict(), path)
    return path


def register_tiny_sam() -> None:
    """Register the tiny SAM as the variant "tiny" (settings then name it: sam_model_type="tiny")."""
    from pipelines.masks.sam_models import SAM_VARIANTS

    SAM_VARIANTS["tiny"] = build_tiny_sam
