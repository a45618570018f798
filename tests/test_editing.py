"""run_edit end to end: tiny SDXL, tiny SAM, the fake Ollama over HTTP, saved PNGs read back."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import half_mask, make_photo

from pipelines.editing import run_edit
from pipelines.outputs import read_parameters
from pipelines.prompting import count_tokens
from pipelines.types import ClickPoint, EditRequest


def test_edit_with_mask_keeps_kept_pixels_and_saves_parameters(tiny_settings, fake_ollama, clip_tokenizers):
    photo = make_photo(170, 130)
    # The feather edge: its ramp geometry is what this test pins (the matte edge: test_compositing).
    request = EditRequest(image=photo, mask=half_mask(photo), keyword="forest", safety="strong",
                          num_inference_steps=4, seed=1234, feather=6, edge="feather")
    result = run_edit(request, tiny_settings)

    out = np.asarray(result.images[0])
    kept = result.mask == 0
    assert result.images[0].size == photo.size
    assert np.array_equal(out[kept], np.asarray(photo)[kept])  # the kept half is the original, exactly
    assert kept[:, :85].all() and not kept[:, 85 + 6:].any()  # feather ramps inside the repaint half only
    changed = np.abs(out.astype(int) - np.asarray(photo).astype(int))[:, 100:].mean()
    assert changed > 5  # the repainted half really changed

    # Mood from LLaVA, prompt from Llama 2, both through the fake server over HTTP.
    assert result.mood == "Stylish, modern, contemporary"
    assert result.prompt == "misty pine forest at dawn, soft light, award winning photograph"
    assert result.prompt_tokens == count_tokens(result.prompt, clip_tokenizers) <= 77
    chat = fake_ollama.bodies("/api/chat")
    assert [b["model"] for b in chat] == ["llava", "llama2"]
    assert "'forest'" in chat[1]["messages"][-1]["content"]
    assert "'Stylish, modern, contemporary'" in chat[1]["messages"][-1]["content"]

    assert result.seeds == [1234]
    assert set(result.timings) >= {"mask", "mood", "prompt", "load", "diffusion", "composite", "save"}
    [path] = result.paths
    assert path.parent == tiny_settings.output_dir and path.suffix == ".png"
    params = read_parameters(path)
    assert params["Prompt"] == result.prompt
    assert params["Negative prompt"] == result.negative_prompt
    assert params["Seed"] == "1234" and params["Steps"] == "4" and params["Sampler"] == "Euler"
    assert params["Size"] == "128x128" and params["Original size"] == "170x130"
    assert params["Safety"].startswith("Hyp-Strong") and params["Erased encoder"] == "none"
    assert params["Mood"] == "Stylish, modern, contemporary"
    assert params["Edge"] == "feather" and float(params["Score"]) == result.scores[0] <= 0


def test_same_seed_same_image_and_candidates_get_their_own_seeds(tiny_settings):
    photo = make_photo()
    request = EditRequest(image=photo, mask=half_mask(photo), prompt="a galaxy", num_inference_steps=3,
                          seed=7, num_candidates=2)
    first = run_edit(request, tiny_settings, save=False)
    again = run_edit(request, tiny_settings, save=False)
    assert first.seeds == [7, 8]
    assert first.images[0].tobytes() == again.images[0].tobytes()
    assert first.images[0].tobytes() != first.images[1].tobytes()
    single = run_edit(dataclasses.replace(request, seed=8, num_candidates=1), tiny_settings, save=False)
    assert single.images[0].tobytes() == first.images[1].tobytes()  # candidate 2 is reproducible alone


def test_edit_from_clicks_with_tiny_sam(tiny_settings):
    photo = make_photo(160, 120)
    request = EditRequest(image=photo, points=[ClickPoint(80, 60)], prompt="a beach", num_inference_steps=2,
                          seed=3)
    result = run_edit(request, tiny_settings, save=False)
    assert result.mask.shape == (120, 160)
    kept = result.mask == 0
    assert kept.any() and not kept.all()
    assert np.array_equal(np.asarray(result.images[0])[kept], np.asarray(photo)[kept])


def test_existing_out_is_never_overwritten(tiny_settings, tmp_path):
    photo = make_photo()
    out = tmp_path / "result.png"
    out.write_bytes(b"precious")
    request = EditRequest(image=photo, mask=half_mask(photo), prompt="a forest", num_inference_steps=2, seed=1)
    result = run_edit(request, tiny_settings, out=out)
    assert out.read_bytes() == b"precious"
    assert result.paths == [tmp_path / "result_2.png"]
    assert any("result.png exists" in n for n in result.notices)


def test_ollama_down_falls_back_to_template_prompt(tiny_settings):
    closed = dataclasses.replace(tiny_settings, ollama_host="http://127.0.0.1:9", ollama_timeout=2.0)
    photo = make_photo()
    request = EditRequest(image=photo, mask=half_mask(photo), keyword="비 오는 밤거리", num_inference_steps=2, seed=1)
    result = run_edit(request, closed, save=False)
    assert "비 오는 밤거리" in result.prompt
    assert any("ollama serve" in n for n in result.notices)
    assert result.prompt_tokens <= 77


@pytest.mark.parametrize("change, message", [
    (dict(points=[ClickPoint(500, 10)], mask=None), r"point \(500, 10\) is outside the photo \(160 x 120\)"),
    (dict(num_inference_steps=0), "steps must be between 1 and 200"),
    (dict(strength=0.0), "strength must be in"),
    (dict(erased="../../etc"), "unknown erased encoder '../../etc'"),
    (dict(safety="extreme"), "unknown safety level"),
    (dict(mask=np.zeros((10, 10), np.float32)), "the mask is 10x10 but the photo is 160x120"),
    (dict(mask=np.zeros((120, 160), np.float32)), "nothing to repaint"),
    (dict(prompt=None, keyword=" ", mood=""), "type a background keyword or a prompt"),
])
def test_bad_requests_are_refused_with_one_line(tiny_settings, change, message):
    photo = make_photo()
    request = dataclasses.replace(EditRequest(image=photo, mask=half_mask(photo), prompt="x"), **change)
    with pytest.raises(ValueError, match=message) as err:
        run_edit(request, tiny_settings, save=False)
    assert "\n" not in str(err.value)


def test_deployment_minimum_safety_is_enforced(tiny_settings):
    strict = dataclasses.replace(tiny_settings, min_safety="medium")
    photo = make_photo()
    request = EditRequest(image=photo, mask=half_mask(photo), prompt="x", safety="weak")
    with pytest.raises(ValueError, match="below this deployment's minimum 'medium'"):
        run_edit(request, strict, save=False)


def test_candidates_come_best_first_and_each_is_reproduced_from_its_own_seed(tiny_settings):
    photo = make_photo(160, 120)
    subject = np.zeros((120, 160), bool)
    subject[30:100, 50:110] = True
    request = EditRequest(image=photo, subject=subject, prompt="a galaxy", num_inference_steps=2, seed=40,
                          num_candidates=3)
    ranked = run_edit(request, tiny_settings, save=False)
    assert sorted(ranked.seeds) == [40, 41, 42]
    assert ranked.scores == sorted(ranked.scores, reverse=True) and len(set(ranked.scores)) == 3
    assert all(s <= 0 for s in ranked.scores)
    kept = ranked.mask == 0  # the matte's solid subject: the photo's own pixels
    assert kept.sum() > 0.5 * subject.sum()
    for image in ranked.images:
        assert np.array_equal(np.asarray(image)[kept], np.asarray(photo)[kept])

    second = dataclasses.replace(request, seed=ranked.seeds[1], num_candidates=1)
    alone = run_edit(second, tiny_settings, save=False)
    assert alone.seeds == [ranked.seeds[1]] and alone.scores == [ranked.scores[1]]
    assert alone.images[0].tobytes() == ranked.images[1].tobytes()


def test_unknown_edge_is_refused(tiny_settings):
    photo = make_photo()
    request = EditRequest(image=photo, mask=half_mask(photo), prompt="x", edge="soft")
    with pytest.raises(ValueError, match="unknown edge 'soft' \\(choose matte, feather, hard\\)"):
        run_edit(request, tiny_settings, save=False)
