"""Settings: environment variables, flags overriding them, one-line errors naming the variable."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pipelines.settings import ROOT, Settings, add_arguments, settings_table


def test_defaults():
    s = Settings.from_env({})
    assert s.sdxl_model == "stabilityai/stable-diffusion-xl-base-1.0"
    assert s.sam_model_type == "vit_h"
    assert s.sam_checkpoint == ROOT / "checkpoints" / "sam_vit_h_4b8939.pth"
    assert (s.vision_model, s.text_model) == ("llava", "llama2")
    assert (s.host, s.port) == ("127.0.0.1", 7860)
    assert s.device == "auto" and s.resolve_dtype("cpu").is_floating_point


def test_environment_is_read():
    s = Settings.from_env({
        "BACKDROP_SDXL_MODEL": "/models/sdxl", "BACKDROP_SAM_MODEL_TYPE": "vit_b",
        "BACKDROP_DEVICE": "cuda:1", "BACKDROP_CHECKPOINT_DIR": "/ckpt", "BACKDROP_OUTPUT_DIR": "/out",
        "OLLAMA_HOST": "http://10.0.0.5:11434", "BACKDROP_CPU_OFFLOAD": "yes", "BACKDROP_PORT": "8080",
    })
    assert s.sdxl_model == "/models/sdxl"
    assert s.sam_checkpoint == Path("/ckpt/sam_vit_b_01ec64.pth")  # follows type and folder
    assert s.device == "cuda:1" and s.cpu_offload is True and s.port == 8080
    assert s.output_dir == Path("/out") and s.ollama_host == "http://10.0.0.5:11434"


def test_flags_override_environment():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--device", "cpu", "--sam-checkpoint", "/x/sam.pth", "--no-cpu-offload"])
    s = Settings.from_env({"BACKDROP_DEVICE": "cuda", "BACKDROP_CPU_OFFLOAD": "1"}, overrides=vars(args))
    assert s.device == "cpu" and s.sam_checkpoint == Path("/x/sam.pth") and s.cpu_offload is False


@pytest.mark.parametrize("env, message", [
    ({"BACKDROP_SAM_MODEL_TYPE": "vit_x"}, "BACKDROP_SAM_MODEL_TYPE='vit_x' is not valid: expected one of vit_h, vit_l, vit_b"),
    ({"BACKDROP_DEVICE": "tpu"}, "BACKDROP_DEVICE='tpu' is not valid"),
    ({"BACKDROP_PORT": "http"}, "BACKDROP_PORT='http' is not valid: expected a positive number"),
    ({"BACKDROP_OLLAMA_TIMEOUT": "-3"}, "BACKDROP_OLLAMA_TIMEOUT='-3' is not valid"),
    ({"BACKDROP_MIN_SAFETY": "extreme"}, "BACKDROP_MIN_SAFETY='extreme' is not valid"),
    ({"BACKDROP_VAE_TILING": "maybe"}, "BACKDROP_VAE_TILING='maybe' is not valid: expected true or false"),
    ({"BACKDROP_CACHE_HOURS": "0"}, "BACKDROP_CACHE_HOURS='0' is not valid: expected a positive number"),
])
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ValueError) as err:
        Settings.from_env(env)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for env, flag, _default, _help in settings_table():
        assert env in readme and flag in readme, env
