"""`python -m pipelines` in a subprocess: exit codes, one-line errors, the --json record."""

from __future__ import annotations

import json

import pytest
from conftest import make_photo, run_cli
from PIL import Image

from pipelines.outputs import read_parameters


@pytest.fixture
def photo_path(tmp_path):
    path = tmp_path / "photo.png"
    make_photo(160, 120).save(path)
    return path


def test_edit_json_record_and_file(tiny_env, tmp_path, photo_path, fake_ollama):
    out = tmp_path / "out.png"
    done = run_cli(["edit", str(photo_path), "--point", "80,60", "--point", "5,5,0", "--keyword", "forest",
                 "--safety", "medium", "--steps", "3", "--seed", "42", "--out", str(out), "--json"],
                tiny_env, tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert not any(n.startswith("SAM unavailable") for n in record["notices"]), record["notices"]
    assert record["outputs"] == [str(out)] and record["seeds"] == [42]
    assert record["edge"] == "matte" and len(record["scores"]) == 1
    assert float(read_parameters(out)["Score"]) == record["scores"][0]
    assert record["prompt"] == "misty pine forest at dawn, soft light, award winning photograph"
    assert record["prompt_tokens"] == 14 and record["mood"] == "Stylish, modern, contemporary"
    assert {"mask", "diffusion"} <= set(record["timings"])
    assert Image.open(out).size == (160, 120)
    assert read_parameters(out)["Safety"].startswith("Hyp-Medium")
    assert "diffusion: step 3/3" in done.stderr  # progress on stderr


def test_edge_flag_reaches_the_png_and_bad_edge_is_refused(tiny_env, tmp_path, photo_path):
    out = tmp_path / "hard.png"
    done = run_cli(["edit", str(photo_path), "--point", "80,60", "--prompt", "a beach", "--edge", "hard",
                 "--steps", "2", "--seed", "3", "--out", str(out), "--json"], tiny_env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["edge"] == "hard" and read_parameters(out)["Edge"] == "hard"
    bad = run_cli(["edit", str(photo_path), "--point", "80,60", "--prompt", "x", "--edge", "soft"], tiny_env, tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--edge" in bad.stderr


def test_existing_out_gets_a_new_name(tiny_env, tmp_path, photo_path):
    out = tmp_path / "taken.png"
    out.write_bytes(b"keep me")
    mask = Image.new("L", (160, 120), 0)
    mask.paste(255, (80, 0, 160, 120))
    mask.save(tmp_path / "mask.png")
    done = run_cli(["edit", str(photo_path), "--mask", str(tmp_path / "mask.png"), "--prompt", "a galaxy",
                 "--steps", "2", "--seed", "1", "--out", str(out), "--json"], tiny_env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == b"keep me"
    assert json.loads(done.stdout)["outputs"] == [str(tmp_path / "taken_2.png")]
    assert "taken.png exists" in done.stderr


@pytest.mark.parametrize("args, message", [
    (["--point", "500,10"], "error: point (500, 10) is outside the photo (160 x 120)"),
    (["--point", "80,60", "--steps", "0"], "error: steps must be between 1 and 200, got 0"),
    (["--point", "80,60", "--erased", "nope"], "error: unknown erased encoder 'nope' (available: none)"),
    (["--point", "80,60,7"], "error: argument --point: point label must be 1 (subject) or 0 (not subject), got 7"),
    (["--point", "eighty"], "error: argument --point: 'eighty' is not X,Y or X,Y,LABEL"),
])
def test_bad_input_exits_2_with_one_line(tiny_env, tmp_path, photo_path, args, message):
    done = run_cli(["edit", str(photo_path), "--prompt", "x", *args], tiny_env, tmp_path)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [message] or (len(lines) == 1 and lines[0].startswith(message)), done.stderr


@pytest.mark.parametrize("args, message", [
    (["--concept", "x", "--concept-type", "object", "--name", "../evil"],
     "error: erased encoder name '../evil' is not valid: use letters, digits, '-' and '_'"),
    (["--concept", "x", "--concept-type", "painter"], "error: argument --concept-type: invalid choice: 'painter'"),
    (["--concept", "x", "--concept-type", "object", "--base", "sd14"],
     "error: --base sd14 needs --model (an SD 1.x diffusers folder or model id)"),
    (["--concept", " ", "--concept-type", "style"], "error: concept is empty"),
])
def test_erase_bad_input_exits_2_before_loading(tiny_env, tmp_path, args, message):
    done = run_cli(["erase", *args], tiny_env, tmp_path)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), done.stderr


def test_non_image_is_refused(tiny_env, tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_text("not a photo")
    done = run_cli(["edit", str(bogus), "--point", "1,1", "--prompt", "x"], tiny_env, tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: the file is not an image Backdrop can read (PNG, JPEG, WebP, ...)"


def test_bad_setting_names_the_variable(tiny_env, tmp_path, photo_path):
    env = {**tiny_env, "BACKDROP_DEVICE": "tpu"}
    done = run_cli(["edit", str(photo_path), "--point", "1,1", "--prompt", "x"], env, tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error: BACKDROP_DEVICE='tpu' is not valid")


def test_presets_json(tiny_env, tmp_path):
    done = run_cli(["presets", "--json"], tiny_env, tmp_path)
    assert done.returncode == 0
    table = json.loads(done.stdout)
    assert table["Hyp-Weak"] == {"level": "weak", "sld_warmup_steps": 15, "sld_guidance_scale": 200, "sld_threshold": 0.0,
                                 "sld_momentum_scale": 0.0, "sld_mom_beta": 0.0}
    assert table["Hyp-Max"]["sld_guidance_scale"] == 5000 and table["Hyp-Max"]["sld_threshold"] == 1.0
    assert list(table) == ["Hyp-Weak", "Hyp-Medium", "Hyp-Strong", "Hyp-Max"]


# --- papercuts (issue 21) ---------------------------------------------------------------------------

def test_out_writes_the_format_its_name_asks_for(tiny_env, tmp_path, photo_path):
    plain = ["edit", str(photo_path), "--point", "80,60", "--background", "white", "--edge", "hard"]
    done = run_cli([*plain, "--out", str(tmp_path / "white.jpg")], tiny_env, tmp_path)
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "white.jpg") as written:
        assert written.format == "JPEG" and written.size == (160, 120)
    refused = run_cli([*plain, "--out", str(tmp_path / "white.gif")], tiny_env, tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("error: argument --out: white.gif: Backdrop writes .png, .jpg, .jpeg, .webp")
    assert not (tmp_path / "white.gif").exists()


def test_a_negative_point_is_read_as_a_point(tiny_env, tmp_path, photo_path):
    done = run_cli(["edit", str(photo_path), "--prompt", "x", "--point", "-5,20"], tiny_env, tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: point (-5, 20) is outside the photo (160 x 120)"


@pytest.mark.parametrize("args, message", [
    (["--point", "80,60", "--steps", "0"], "steps must be between 1 and 200, got 0"),
    (["--point", "80,60", "--edge", "soft"], "argument --edge: invalid choice: 'soft'"),
])
def test_json_errors_are_an_object_on_stdout(tiny_env, tmp_path, photo_path, args, message):
    done = run_cli(["edit", str(photo_path), "--prompt", "x", "--json", *args], tiny_env, tmp_path)
    assert done.returncode == 2
    record = json.loads(done.stdout)
    assert list(record) == ["error"] and record["error"].startswith(message)
    assert done.stderr.strip() == f"error: {record['error']}"


def test_a_failed_sam_download_is_said_once(tiny_env, tmp_path, photo_path):
    env = {**tiny_env, "BACKDROP_SAM_MODEL_TYPE": "vit_h", "BACKDROP_SAM_AUTO_DOWNLOAD": "1",
           "BACKDROP_SAM_CHECKPOINT": str(tmp_path / "sam_vit_h_4b8939.pth"),
           "BACKDROP_SAM_DOWNLOAD_BASE": "http://127.0.0.1:9/"}
    done = run_cli(["edit", str(photo_path), "--point", "80,60", "--background", "white", "--edge", "hard",
                    "--json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("SAM unavailable: could not download") == 1, done.stderr
    assert "BACKDROP_SAM_AUTO_DOWNLOAD" not in done.stderr  # it is on: no advice to allow it
    assert json.loads(done.stdout)["notices"][0].startswith("SAM unavailable: could not download")
