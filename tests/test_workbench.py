"""The page's background work without Gradio: early embedding and mood, reuse, cancel per session."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import half_mask, make_photo

from pipelines.diffusion.blending import Cancelled
from pipelines.entry.workbench import Workbench
from pipelines.types import ClickPoint, EditRequest


def test_upload_starts_embedding_and_mood_and_clicks_reuse_them(tiny_settings, fake_ollama):
    # A predictor slot of its own (the one SAM cache is per process, keyed by the settings): other
    # tests' embeddings of the same synthetic photo must not count here.
    studio = Workbench(dataclasses.replace(tiny_settings, sam_cache_size=7))
    photo = make_photo(160, 120)
    key = studio.add_photo(photo)
    assert studio.add_photo(photo.copy()) == key  # same pixels, same photo: nothing started twice
    assert studio.mood(key).mood == "Stylish, modern, contemporary"
    first = studio.predict(key, [ClickPoint(80, 60)])
    second = studio.predict(key, [ClickPoint(80, 60), ClickPoint(5, 5, 0)], first.next_mask_input(0))
    predictor, _ = studio.predictor()
    assert predictor.embed_count == 1  # computed at upload, reused by both clicks
    assert first.masks.shape == second.masks.shape == (3, 120, 160)
    assert len(fake_ollama.bodies("/api/chat")) == 1  # LLaVA asked once, at upload
    with pytest.raises(ValueError, match="no longer loaded"):
        studio.image("0" * 64)


def test_cancel_stops_the_sessions_edit_and_the_next_edit_works(tiny_settings):
    studio = Workbench(tiny_settings)
    photo = make_photo()
    mask = half_mask(photo)
    request = EditRequest(image=photo, mask=mask, prompt="a forest", num_inference_steps=6, seed=3)
    steps = []

    def on_progress(stage, i, n, preview):
        if stage == "diffusion":
            steps.append(i)
            if i == 2:
                assert studio.cancel("other-session") is False  # another session's edit is not touched
                assert studio.cancel("me") is True

    with pytest.raises(Cancelled):
        studio.edit(request, "me", on_progress)
    assert steps == [1, 2]  # stopped at the next step
    assert studio.cancel("me") is False  # nothing is running any more
    result = studio.edit(dataclasses.replace(request, num_inference_steps=2), "me")
    assert len(result.images) == 1 and result.seeds == [3]


def test_a_failed_sam_load_is_tried_again_with_the_next_photo(tiny_settings, tmp_path, tiny_sam_checkpoint):
    missing = tmp_path / "later" / "sam_tiny.pth"
    studio = Workbench(dataclasses.replace(tiny_settings, sam_checkpoint=missing))
    first = studio.predict(studio.add_photo(make_photo(seed=1)), [ClickPoint(80, 60)])
    assert first.method == "grabcut"
    assert first.notices[0] == (f"SAM unavailable: SAM checkpoint {missing} does not exist (only the official "
                                "files sam_vit_h_4b8939.pth, sam_vit_l_0b3195.pth, sam_vit_b_01ec64.pth are downloaded)")
    assert studio.status_lines()[0].endswith("; SAM is tried again on the next photo")

    missing.parent.mkdir()
    missing.write_bytes(tiny_sam_checkpoint.read_bytes())  # put in place while the page runs
    second = studio.predict(studio.add_photo(make_photo(seed=2)), [ClickPoint(80, 60)])
    assert second.method == "sam" and second.notices == []
    predictor, _ = studio.predictor()
    assert predictor.embed_count == 1  # the second photo, embedded at upload by the one shared predictor
    assert studio.status_lines()[0] == "SAM tiny on cpu"
