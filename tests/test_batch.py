"""The batch command: manifest rows -> requests, resumable results.jsonl, and Ray workers on CPU
giving the same images as one process (tiny models, a local 2-CPU Ray cluster shared by the module)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_photo
from PIL import Image

from pipelines.entry import batch
from pipelines.masks.grabcut import grabcut_mask
from pipelines.entry.cli import main
from pipelines.editing import run_edit
from pipelines.outputs import read_parameters
from pipelines.types import ClickPoint, EditRequest


def _write_csv(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    make_photo(160, 120, seed=1).save(folder / "a.png")
    make_photo(160, 120, seed=2, color=(30, 90, 200)).save(folder / "b.png")
    mask = Image.new("L", (160, 120), 0)
    mask.paste(255, (80, 0, 160, 120))  # repaint the right half
    mask.save(folder / "right.png")
    return folder


@pytest.fixture
def cli_env(tiny_env, monkeypatch):
    """`main()` in this process reads the tiny models' settings from the environment."""
    for key, value in tiny_env.items():
        monkeypatch.setenv(key, value)


# --- rows ------------------------------------------------------------------------------------------

def test_columns_map_to_request_fields_and_unknown_ones_are_refused(tmp_path):
    columns = batch.request_columns()
    assert columns["steps"] == "num_inference_steps" and columns["guidance"] == "guidance_scale"
    assert columns["candidates"] == "num_candidates" and columns["seed"] == "seed"
    assert {"keyword", "mood", "prompt", "safety", "erased", "strength", "edit_subject"} <= set(columns)
    assert not {"image", "points", "mask", "subject", "num_inference_steps"} & set(columns)
    assert batch.parse_cell("steps", " 12 ") == 12 and batch.parse_cell("guidance", "6.5") == 6.5
    assert batch.parse_cell("edit_subject", "yes") is True
    with pytest.raises(ValueError, match=r"^steps='many' is not a whole number$"):
        batch.parse_cell("steps", "many")
    assert batch.parse_points("10,20; 5,6,0;") == [ClickPoint(10, 20, 1), ClickPoint(5, 6, 0)]
    with pytest.raises(ValueError, match="'10' is not X,Y"):
        batch.parse_points("10")

    manifest = _write_csv(tmp_path / "m.csv", "photo,keyword,colour,size", "a.png,forest,red,3")
    with pytest.raises(ValueError, match=r"^unknown column\(s\) in m.csv: colour, size \(known: ") as err:
        batch.read_manifest(manifest)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="m.csv has no 'photo' column"):
        batch.read_manifest(_write_csv(manifest, "image,keyword", "a.png,forest"))


def test_flags_are_defaults_cells_override_and_the_key_follows_the_parameters(tmp_path, photos, tiny_settings):
    rows = [{"photo": "a.png", "steps": "5"}, {"photo": "a.png"}, {"photo": "a.png", "steps": "30"}]
    defaults = {"steps": 30, "keyword": "forest", "seed": None, "out": "ignored"}
    tasks = batch.make_tasks(rows, defaults, photos, tmp_path / "out", tiny_settings)
    assert tasks[0].fields == {"num_inference_steps": 5, "keyword": "forest"}
    assert tasks[1].fields == tasks[2].fields == {"num_inference_steps": 30, "keyword": "forest"}
    assert tasks[1].key == tasks[2].key != tasks[0].key  # same effective parameters, same key
    assert tasks[1].out == tmp_path / "out" / f"0002-a-{tasks[1].key}.png"
    (photos / "a.png").write_bytes((photos / "b.png").read_bytes())  # a new photo under the old name
    assert batch.make_tasks(rows[1:2], defaults, photos, tmp_path / "out", tiny_settings)[0].key != tasks[1].key


def test_automatic_subject_finds_the_centred_subject_with_grabcut():
    photo = make_photo(160, 120)
    points = batch.auto_points(160, 120)
    assert points == [ClickPoint(80, 60, 1), ClickPoint(5, 4, 0), ClickPoint(154, 4, 0),
                      ClickPoint(5, 115, 0), ClickPoint(154, 115, 0)]
    subject = grabcut_mask(photo, points)
    yy, xx = np.mgrid[:120, :160]
    disk = (xx - 80) ** 2 + (yy - 60) ** 2 <= 30**2
    iou = (subject & disk).sum() / (subject | disk).sum()
    assert iou > 0.9, iou


# --- the command -----------------------------------------------------------------------------------

def test_batch_records_every_row_goes_on_after_bad_ones_and_resumes(cli_env, tmp_path, photos, tiny_settings):
    manifest = _write_csv(
        photos / "edits.csv", "photo,points,mask,prompt,seed,candidates,edge",
        'a.png,"80,60;5,5,0",,a forest,11,,',       # clicks (quoted: they hold commas)
        "b.png,,right.png,,12,,hard",               # a mask (hard edge: the kept half exact); keyword from the flags
        "missing.png,,,,,,",                        # no such photo
        'a.png,"500,10",,,13,,',                    # a click outside the photo
        "b.png,,,a beach,14,2,")                    # automatic subject, two candidates
    out = tmp_path / "out"
    args = ["batch", str(manifest), "--out", str(out), "--keyword", "forest", "--steps", "2", "--no-progress"]
    assert main(args) == 1

    records = {r["row"]: r for r in _records(out)}
    assert [records[n]["status"] for n in range(1, 6)] == ["done", "done", "failed", "failed", "done"]
    assert records[3]["error"].startswith(f"cannot read {photos / 'missing.png'}")
    assert records[4]["error"] == "point (500, 10) is outside the photo (160 x 120)"
    assert records[2]["prompt"] == "misty pine forest at dawn, soft light, award winning photograph"
    assert records[2]["mood"] == "Stylish, modern, contemporary" and records[2]["seeds"] == [12]
    assert sorted(records[5]["seeds"]) == [14, 15] and len(records[5]["outputs"]) == 2  # ranked: best first
    assert records[5]["notices"][0].startswith("automatic subject")
    # Where each done row's time went, as `--json` says for one edit; a failed row has none.
    assert {"mask", "prompt", "diffusion", "save"} <= set(records[1]["timings"]) and records[3]["timings"] == {}

    # Row 1 is exactly the edit its cells describe.
    [first] = records[1]["outputs"]
    assert Path(first).name == f"0001-a-{records[1]['key']}.png"
    reference = run_edit(EditRequest(image=Image.open(photos / "a.png").convert("RGB"),
                                     points=[ClickPoint(80, 60), ClickPoint(5, 5, 0)], prompt="a forest",
                                     keyword="forest", num_inference_steps=2, seed=11), tiny_settings, save=False)
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(reference.images[0]))
    assert read_parameters(first)["Steps"] == "2"
    # Row 2 keeps the left half of its photo exactly.
    edited = np.asarray(Image.open(records[2]["outputs"][0]))
    assert np.array_equal(edited[:, :80], np.asarray(Image.open(photos / "b.png"))[:, :80])

    # A rerun skips what is done (no new file), and tries the failed rows again.
    pngs = sorted(out.glob("*.png"))
    assert main(args) == 1
    rerun = _records(out)[5:]
    assert sorted((r["row"], r["status"]) for r in rerun) == [
        (1, "skipped"), (2, "skipped"), (3, "failed"), (4, "failed"), (5, "skipped")]
    assert sorted(out.glob("*.png")) == pngs
    assert {r["row"]: r["outputs"] for r in rerun if r["status"] == "skipped"} == \
        {n: records[n]["outputs"] for n in (1, 2, 5)}

    # Fixed rows and a changed parameter: only those run, the old outputs stay; all done -> exit 0.
    _write_csv(manifest, "photo,points,mask,prompt,seed,candidates,edge",
               'a.png,"80,60;5,5,0",,a forest,11,,', "b.png,,right.png,,12,,hard",
               'a.png,"80,60",,,13,,', "b.png,,,a beach,99,2,")
    assert main(args) == 0
    last = {r["row"]: r for r in _records(out)[10:]}
    assert [last[n]["status"] for n in range(1, 5)] == ["skipped", "skipped", "done", "done"]
    assert sorted(last[4]["seeds"]) == [99, 100] and set(pngs) < set(out.glob("*.png"))
    assert len(list(out.glob("*.png"))) == len(pngs) + 3


def test_batch_of_a_folder(cli_env, tmp_path, photos, capsys):
    (photos / "right.png").unlink()
    (photos / "notes.txt").write_text("not a photo")
    out = tmp_path / "out"
    assert main(["batch", str(photos), "--out", str(out), "--prompt", "a galaxy", "--steps", "1",
                 "--seed", "5", "--no-progress"]) == 0
    records = sorted(_records(out), key=lambda r: r["row"])
    assert [Path(r["photo"]).name for r in records] == ["a.png", "b.png"]
    assert all(r["status"] == "done" and r["seeds"] == [5] for r in records)
    assert capsys.readouterr().out.startswith("2 done, 0 skipped, 0 failed")


def test_bad_manifest_exits_2_with_one_line(cli_env, tmp_path, photos, capsys):
    manifest = _write_csv(photos / "m.csv", "photo,colour", "a.png,red")
    assert main(["batch", str(manifest), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: unknown column(s) in m.csv: colour (known: ")


# --- Ray ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    """One small local Ray cluster for all Ray tests: its start-up, and each worker's, takes many
    seconds on 2 cores. The workers stay up between the tests (the page's edit reuses one)."""
    ray = pytest.importorskip("ray")
    from pipelines.entry import cluster

    cluster.connect(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024**2,
                    log_to_driver=False, num_gpus=0)
    yield ray.get_runtime_context().gcs_address
    cluster.stop_workers()
    ray.shutdown()


@pytest.fixture
def one_thread():
    """Ray gives a CPU worker one torch thread (its one CPU); CPU convolutions round differently with
    another thread count, so the in-process reference runs with one thread too. (On a GPU the thread
    count does not enter.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_ray_workers_give_the_serial_images(ray_cluster, one_thread, tmp_path, photos, tiny_settings):
    rows = [{"photo": "a.png", "points": "80,60", "seed": "1"},
            {"photo": "b.png", "mask": "right.png", "keyword": "forest", "seed": "2"},
            {"photo": "a.png", "prompt": "a beach", "seed": "3", "candidates": "2"},
            {"photo": "nope.png"}]
    defaults = {"prompt": None, "steps": 2}
    results = {}
    for name, workers in (("serial", None), ("ray", 2)):
        out = tmp_path / name
        tasks = batch.make_tasks(rows, defaults, photos, out, tiny_settings)
        records = batch.run_batch(tasks, tiny_settings, out, workers=workers, progress=False)
        results[name] = {r["row"]: r for r in records}
    serial, ray = results["serial"], results["ray"]
    assert [ray[n]["status"] for n in range(1, 5)] == ["done", "done", "done", "failed"]
    for n in (1, 2, 3):
        assert ray[n]["seeds"] == serial[n]["seeds"] and ray[n]["prompt"] == serial[n]["prompt"]
        assert len(ray[n]["outputs"]) == len(serial[n]["outputs"]) > 0
        for mine, theirs in zip(ray[n]["outputs"], serial[n]["outputs"]):
            assert Path(mine).name == Path(theirs).name
            assert Path(mine).read_bytes() == Path(theirs).read_bytes()  # pixels and parameters


def test_page_edit_on_a_ray_worker(ray_cluster, one_thread, tiny_settings):
    from pipelines.entry import cluster

    settings = dataclasses.replace(tiny_settings, ray_address=ray_cluster)
    photo = make_photo(160, 120)
    subject = np.zeros((120, 160), bool)
    subject[30:90, 50:110] = True  # the page's chosen mask: the worker runs no SAM
    request = EditRequest(image=photo, subject=subject, prompt="a galaxy", num_inference_steps=2, seed=8)
    remote = cluster.run_edit_remote(request, settings)
    local = run_edit(request, settings, save=False)
    assert remote.seeds == [8] and remote.prompt == local.prompt
    assert np.array_equal(np.asarray(remote.images[0]), np.asarray(local.images[0]))
    assert remote.paths[0].parent == settings.output_dir and remote.paths[0].exists()

    with pytest.raises(ValueError, match="^steps must be between 1 and 200, got 0$"):
        cluster.run_edit_remote(dataclasses.replace(request, num_inference_steps=0), settings)
