"""One definition of an edit (issue 21): `EditRequest`'s option fields make the command line's flags,
`/edit`'s parameters and docs, the batch columns and the page's defaults; the checks sit at the edge."""

from __future__ import annotations

import argparse
import dataclasses
import io

import numpy as np
import pytest
from conftest import make_photo

import app
import app_api
from pipelines import editing
from pipelines.entry import batch, page
from pipelines.masks import masking
from pipelines.entry.cli import add_request_options, build_parser
from pipelines.settings import Settings
from pipelines.types import ClickPoint, EditRequest, edit_options, not_options, option_field


@dataclasses.dataclass
class WithShadow(EditRequest):
    """A copy of the request with one more option, as the next issue (a shadow) would add it."""

    shadow: float = option_field(0.25, "opacity of the subject's drop shadow", name="shadow_opacity",
                                 range=(0, 1), slider=(0, 1, 0.05))


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


def _subparser(name: str) -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def test_a_new_field_reaches_the_command_line_the_api_and_the_batch_columns():
    parser = argparse.ArgumentParser()
    add_request_options(parser, WithShadow)
    flag = _flags(parser)["--shadow-opacity"]
    assert _flags(parser)["--shadow"] is flag  # the field's own name, as an alias
    assert flag.default == 0.25 and flag.type is float and "drop shadow" in flag.help
    args = parser.parse_args(["--shadow-opacity", "0.5", "--steps", "3"])
    assert args.shadow_opacity == 0.5 and args.steps == 3

    signature = app_api.edit_signature(WithShadow)
    assert signature.parameters["shadow_opacity"].default == 0.25
    assert signature.parameters["shadow_opacity"].annotation is float
    assert list(signature.parameters)[-1] == "shadow_opacity"  # after every existing one: clients keep their order
    doc = app_api.edit_doc(WithShadow)
    assert "    shadow_opacity: opacity of the subject's drop shadow; 0 to 1; default 0.25." in doc.splitlines()

    assert batch.request_columns(WithShadow)["shadow_opacity"] == "shadow"
    assert batch.parse_cell("shadow_opacity", " 0.75 ", WithShadow) == 0.75
    # And the one check: its range is enforced by validate_request with nothing else written.
    request = WithShadow(image=make_photo(64, 48), points=[ClickPoint(30, 20)], shadow=2.0)
    with pytest.raises(ValueError, match=r"^shadow opacity must be between 0 and 1, got 2.0$"):
        editing.validate_request(request, Settings())
    # Nothing leaked into the real request's definition.
    assert "shadow" not in {o.field for o in edit_options()}


def test_every_field_is_an_option_everywhere_or_listed_with_a_reason():
    assert set(not_options()) == {"image", "points", "mask", "subject", "auto_subject"}
    assert all(len(reason) > 20 for reason in not_options().values())
    fields = {f.name for f in dataclasses.fields(EditRequest)}
    options = edit_options()
    assert {o.field for o in options} == fields - set(not_options())
    signature = app_api.edit_signature()
    columns = batch.request_columns()
    for command in ("edit", "batch"):
        flags = _flags(_subparser(command))
        for option in options:
            assert flags[option.flag].dest == option.name, (command, option.field)
    for option in options:
        assert option.name in signature.parameters, option.field
        assert columns[option.name] == option.field
        # /edit's default is the request's, or "" / None where empty means "decided later"
        assert signature.parameters[option.name].default in (option.default, "", None)
    # Where the subject is: points and a mask come in on every entry point, the page's subject on the page only.
    assert {"photo", "points", "mask"} <= set(signature.parameters)
    assert {"--point", "--mask"} <= set(_flags(_subparser("edit")))


def test_names_and_defaults_are_written_once():
    # The short names every entry point uses for diffusers' field names.
    names = {o.field: o.name for o in edit_options() if o.field != o.name}
    assert names == {"num_inference_steps": "steps", "guidance_scale": "guidance", "num_candidates": "candidates"}
    # The command line also takes the diffusers spelling.
    args = _subparser("edit").parse_args(["photo.png", "--point", "1,1", "--num-inference-steps", "7"])
    assert args.steps == 7
    # The page's widgets start at the request's defaults, within the definition's ranges.
    form = page.GenerateForm()
    request = EditRequest(image=None)
    assert (form.steps, form.guidance, form.strength, form.candidates, form.grow, form.feather, form.edge,
            form.scheduler, form.place, form.background) == (
        request.num_inference_steps, request.guidance_scale, request.strength, request.num_candidates,
        request.grow, request.feather, request.edge, request.scheduler, request.place, request.background)
    assert page.slider("guidance_scale") == {"minimum": 0, "maximum": 20, "step": 0.5, "value": 7.5}
    assert page.choices("edge") == {"choices": ["matte", "feather", "hard"], "value": "matte"}
    for option in edit_options():
        if option.slider and option.range:
            low, high = option.range
            assert low <= option.slider[0] and (high is None or option.slider[1] <= high), option.field


def test_edit_help_lists_only_what_an_edit_reads():
    flags = set(_flags(_subparser("edit")))
    assert not {"--host", "--port", "--queue-size", "--max-upload-mb", "--cache-hours", "--ray"} & flags
    assert {"--sdxl-model", "--sam-checkpoint", "--device", "--min-safety", "--output-dir"} <= flags
    assert "--ray" in _flags(_subparser("batch")) and "--port" not in _flags(_subparser("batch"))
    # The page still takes every setting.
    parser = argparse.ArgumentParser()
    from pipelines.settings import add_arguments

    add_arguments(parser)
    assert {"--host", "--port", "--ray", "--sdxl-model"} <= set(_flags(parser))


def test_points_are_checked_once_on_the_sam_path(monkeypatch):
    calls = []
    real = masking.check_points
    monkeypatch.setattr(masking, "check_points", lambda *a: calls.append(a) or real(*a))
    photo = make_photo(64, 48)
    request = EditRequest(image=photo, points=[ClickPoint(30, 20)], edge="hard")
    editing.validate_request(request, Settings())
    assert len(calls) == 1
    editing.build_mask(request, Settings(), predictor=None)  # GrabCut here: SAM's path is the same call
    assert len(calls) == 1
    masking.predict_masks(photo, [ClickPoint(30, 20)], None)  # the page's and /mask's clicks: checked there
    assert len(calls) == 2


def test_no_step_would_run_is_one_message():
    photo = make_photo(64, 48)
    request = EditRequest(image=photo, points=[ClickPoint(30, 20)], num_inference_steps=10, strength=0.05)
    with pytest.raises(ValueError) as from_request:
        editing.validate_request(request, Settings())
    import torch  # noqa: F401  (blending needs it; the tiny test models do too)
    from pipelines.diffusion import blending

    with pytest.raises(ValueError) as from_blend:
        blending.blend(None, photo.resize((64, 48)), np.ones((48, 64), np.float32), "x",
                       num_inference_steps=10, strength=0.05)
    assert str(from_request.value) == str(from_blend.value) == \
        "strength 0.05 is too low for 10 steps: no step would run"


def test_the_console_names_our_share_flag():
    stream = io.StringIO()
    ours = app.OurFlags(stream)
    print("* Running on local URL:  http://127.0.0.1:7860", file=ours)
    print("* To create a public link, set `share=True` in `launch()`.", file=ours)
    assert stream.getvalue().splitlines() == ["* Running on local URL:  http://127.0.0.1:7860",
                                              "* To create a public link, start Backdrop with --share."]


def test_gradio_builds_edit_from_the_generated_signature():
    import gradio as gr

    demo = gr.Blocks()
    app_api.register_api(demo, None, lambda path: path)
    endpoint = next(fn for fn in demo.fns.values() if fn.api_name == "edit")
    assert len(endpoint.outputs) == 2  # the images and the record
    listed = demo.get_api_info()["named_endpoints"]["/edit"]["parameters"]
    assert [p["parameter_name"] for p in listed] == list(app_api.edit_signature().parameters)
    seed = next(p for p in listed if p["parameter_name"] == "seed")
    assert seed["parameter_default"] is None and seed["python_type"]["type"] == "None | int"
