"""Many photos: `python -m pipelines batch MANIFEST.csv|FOLDER --out DIR`, resumable.

A manifest is a CSV file with one row per edit: a `photo` column, then any of `points`
(`X,Y[,L];X,Y[,L]`), `mask` (an image, white = repaint), and the edit's options (`keyword`, `mood`,
`prompt`, `seed`, `safety`, `erased`, `steps`, `guidance`, `strength`, `candidates`, `background`,
`canvas`, `place`, ...). Paths (photo, mask, a background picture) are relative to the manifest's folder. Command-line flags give every row its defaults; a cell overrides
them. A FOLDER instead of a manifest means one row per photo in it, with the flags' options.

Each row becomes an `EditRequest` and runs through `editing.run_edit`, which checks it; nothing is
checked twice here. Columns are `EditRequest`'s options (`request_columns`, from `types.edit_options`),
each under its short name, so a new option is a new column.

A row with neither points nor mask gets an **automatic subject**: the subject model finds it
(`pipelines/subject.py`, `BACKDROP_SUBJECT_MODEL`). Without a subject model, `auto_points`: one
click on the centre of the photo and four "not subject" clicks near its corners, handed to SAM (or
to GrabCut without SAM) like a person's clicks; it fails when the centre is background (the
background is kept and the subject repainted, or the edit is refused when the mask covers the
whole photo): give such rows points or a mask.

Resuming: `DIR/results.jsonl` gets one JSON record per row (row, photo, key, status `done` /
`failed` / `skipped`, outputs, seeds, prompt, mood, notices, error, seconds). The key is a hash of
the row's effective parameters (photo and mask bytes included); a rerun skips rows whose key was
done before and whose outputs still exist. Outputs are named `<row>-<photo>-<key>.png` in DIR and
never overwritten (`outputs.save_png`).

Rows run in this process, or on Ray workers (`pipelines.entry.cluster`) with `--workers N` / `--ray`.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.composite.backgrounds import picture_path
from pipelines.errors import one_line
from pipelines.settings import Settings
from pipelines.types import ClickPoint, EditOption, EditRequest, edit_options

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# Settings that change what a row produces, hashed into its key along with the row.
KEYED_SETTINGS = ("sdxl_model", "sam_model_type", "sam_checkpoint", "sam_decoder", "working_pixels", "vision_model",
                  "text_model", "llm_temperature")  # a None one (sam_decoder of a .pth variant) is left out
AUTO_INSET = 0.03  # corner clicks of the automatic subject sit this fraction of each side inside


@dataclass
class Task:
    """One manifest row, ready for a worker (all paths absolute).

    Attributes:
        row: the row's number, 1 = the first row under the header (or the first photo of a folder).
        photo: the photo file.
        mask: a mask image (white = repaint), or None.
        points: clicks in photo pixels; empty with no mask means the automatic subject.
        fields: `EditRequest` fields from the flags' defaults and the row's cells.
        key: hash of the effective parameters; names the outputs and decides what a rerun skips.
        out: the first output file; further candidates get -2, -3, ...
        error: why the row cannot run (read before any worker sees it), or None.
    """

    row: int
    photo: Path
    mask: Path | None = None
    points: list[ClickPoint] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    out: Path | None = None
    error: str | None = None

    def record(self, status: str, **values: Any) -> dict[str, Any]:
        """The row's results.jsonl record."""
        base = {"row": self.row, "photo": str(self.photo), "key": self.key, "status": status,
                "outputs": [], "seeds": [], "prompt": None, "mood": None, "notices": [], "error": None,
                "seconds": None, "timings": {}}
        return base | values


# --- reading rows ---------------------------------------------------------------------------------

@functools.cache
def request_columns(request_type: type = EditRequest) -> dict[str, str]:
    """Manifest column -> `EditRequest` field, for every option (`types.edit_options`), under its short
    name as the edit command's flag spells it (`steps` for `num_inference_steps`). One shared dict:
    callers only read it. The photo, points and mask columns are the request's other fields
    (`types.not_options`), read by `make_tasks`."""
    return {option.name: option.field for option in edit_options(request_type)}


@functools.cache
def _column_options(request_type: type = EditRequest) -> dict[str, EditOption]:
    options = {option.field: option for option in edit_options(request_type)}
    return {column: options[name] for column, name in request_columns(request_type).items()}


def parse_cell(column: str, text: str, request_type: type = EditRequest) -> Any:
    """A cell's text as the type of its `EditRequest` field; one-line ValueError when it is not."""
    return _column_options(request_type)[column].parse(text)


def parse_point(text: str) -> ClickPoint:
    """`X,Y` or `X,Y,LABEL` (label 1 subject, 0 not subject) as a `ClickPoint`."""
    parts = text.strip().split(",")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        x, y, *label = (int(float(p)) for p in parts)
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not X,Y or X,Y,LABEL (label 1 subject, 0 not)") from None
    return ClickPoint(x, y, label[0] if label else 1)


def parse_points(text: str) -> list[ClickPoint]:
    """`X,Y[,L];X,Y[,L];...` as clicks."""
    return [parse_point(part) for part in text.split(";") if part.strip()]


def read_manifest(path: Path) -> list[dict[str, str]]:
    """The manifest's rows as {column: cell}, empty cells left out.

    Raises:
        ValueError: no `photo` column, or a column that is neither a path nor an edit option.
    """
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        known = {"photo", "points", "mask", *request_columns()}
        unknown = [name for name in header if name not in known]
        if "photo" not in header:
            raise ValueError(f"{path.name} has no 'photo' column")
        if unknown:
            raise ValueError(f"unknown column(s) in {path.name}: {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(known))})")
        reader.fieldnames = header
        return [{k: v.strip() for k, v in row.items() if k is not None and v and v.strip()} for row in reader]


def folder_rows(folder: Path) -> list[dict[str, str]]:
    """One row per photo in `folder` (not its subfolders), by name."""
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())
    if not photos:
        raise ValueError(f"no photos ({', '.join(PHOTO_SUFFIXES)}) in {folder}")
    return [{"photo": p.name} for p in photos]


def make_tasks(rows: Iterable[Mapping[str, str]], defaults: Mapping[str, Any], base: Path, out_dir: Path,
               settings: Settings) -> list[Task]:
    """Rows (cells as text) and the flags' defaults -> tasks with keys and output names.

    A row whose cells or files are bad gets `error` set instead of raising: the others go on.
    """
    columns = request_columns()
    keyed = {name: str(value) for name in KEYED_SETTINGS if (value := getattr(settings, name)) is not None}
    tasks = []
    for number, row in enumerate(rows, start=1):
        task = Task(row=number, photo=(base / row.get("photo", "")).resolve())
        try:
            task.fields = {columns[c]: v for c, v in defaults.items() if c in columns and v is not None}
            task.fields |= {columns[c]: parse_cell(c, v) for c, v in row.items() if c in columns}
            task.points = parse_points(row.get("points", ""))
            task.mask = (base / row["mask"]).resolve() if "mask" in row else None
            files = {"photo": _file_hash(task.photo), "mask": _file_hash(task.mask) if task.mask else None}
            if picture := picture_path(task.fields.get("background", "")):
                # A background picture: a cell's path is relative to the manifest, a flag's to where
                # the command runs; its bytes are part of the key, like the photo's.
                path = ((base if "background" in row else Path.cwd()) / picture).resolve()
                task.fields["background"] = str(path)
                files["background"] = _file_hash(path)
            effective = {"files": files, "points": [dataclasses.astuple(p) for p in task.points],
                         "fields": task.fields, "settings": keyed}
            task.key = hashlib.sha256(json.dumps(effective, sort_keys=True).encode()).hexdigest()[:12]
            task.out = out_dir / f"{number:04d}-{task.photo.stem}-{task.key}.png"
        except ValueError as exc:
            task.error = str(exc)
        tasks.append(task)
    return tasks


def _file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc


# --- running one row -----------------------------------------------------------------------------

def auto_points(width: int, height: int) -> list[ClickPoint]:
    """The automatic subject's clicks: the centre is subject, points near the four corners are not."""
    dx, dy = max(1, round(AUTO_INSET * width)), max(1, round(AUTO_INSET * height))
    corners = [(dx, dy), (width - 1 - dx, dy), (dx, height - 1 - dy), (width - 1 - dx, height - 1 - dy)]
    return [ClickPoint(width // 2, height // 2, 1)] + [ClickPoint(x, y, 0) for x, y in corners]


def build_request(task: Task, settings: Settings) -> tuple[EditRequest, list[str]]:
    """The row's `EditRequest` (photo and mask loaded) and notices about how it was made."""
    from pipelines.images import load_image, load_mask

    image = load_image(task.photo, settings.max_image_pixels)
    mask = load_mask(task.mask, image.size) if task.mask else None
    points, notices = task.points, []
    if not points and mask is None:
        from pipelines.masks.subject import get_subject_model

        model, model_notices = get_subject_model(settings)
        if model is not None:  # the subject model finds the subject (pipelines/subject.py)
            return EditRequest(image=image, auto_subject=True, **task.fields), model_notices
        points = auto_points(*image.size)
        notices.append(f"automatic subject: the centre of the photo (no points or mask in the row; "
                       f"{model_notices[0]})")
    return EditRequest(image=image, points=points, mask=mask, **task.fields), notices


def run_task(task: Task, settings: Settings) -> dict[str, Any]:
    """Run one row; a bad row (unreadable photo, bad click, no weights) gives a `failed` record."""
    from pipelines.editing import run_edit
    from pipelines.outputs import result_record

    start = time.perf_counter()
    try:
        request, notices = build_request(task, settings)
        result = run_edit(request, settings, out=task.out)
    except (ValueError, RuntimeError, OSError) as exc:  # RuntimeError includes out of GPU memory
        return task.record("failed", error=one_line(exc), seconds=round(time.perf_counter() - start, 3))
    # The same values as `edit --json` prints, so the two records cannot drift apart.
    edited = result_record(result, request)
    return task.record("done", **{key: edited[key] for key in ("outputs", "seeds", "prompt", "mood", "timings")},
                       notices=notices + result.notices, seconds=round(time.perf_counter() - start, 3))


# --- the whole batch -----------------------------------------------------------------------------

def previous_results(results: Path) -> dict[str, dict[str, Any]]:
    """Key -> the last `done`/`skipped` record of `results.jsonl` whose outputs all still exist."""
    done: dict[str, dict[str, Any]] = {}
    if not results.exists():
        return done
    for line in results.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: that row simply runs again
        if record.get("status") in ("done", "skipped") and record.get("outputs") and \
                all(Path(p).exists() for p in record["outputs"]):
            done[record["key"]] = record
    return done


def run_batch(tasks: list[Task], settings: Settings, out_dir: Path, workers: int | None = None,
              address: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Run the tasks, appending a record per row to `out_dir/results.jsonl`.

    Args:
        tasks: from `make_tasks`.
        settings: models, devices, Ollama.
        out_dir: outputs and results.jsonl.
        workers: Ray workers to use (0: one per GPU; None: run in this process, unless `address` is given).
        address: a Ray cluster to join (None: a local one when `workers` is given).
        progress: show a progress bar on stderr (rows done, ETA, failures).

    Returns:
        The records of this run, in the order rows finished.
    """
    from tqdm.auto import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "results.jsonl"
    before = previous_results(results)
    records: list[dict[str, Any]] = []
    failed = 0  # counted as rows finish: the bar's postfix is updated once per row
    todo: list[Task] = []
    with open(results, "a", encoding="utf-8") as log, \
            tqdm(total=len(tasks), unit="row", desc="batch", file=sys.stderr, disable=not progress) as bar:
        def finish(record: dict[str, Any]) -> None:
            nonlocal failed
            log.write(json.dumps(record, ensure_ascii=False) + "\n")
            log.flush()  # a crash loses at most the row in progress
            records.append(record)
            failed += record["status"] == "failed"
            bar.update(1)
            bar.set_postfix(failed=failed)

        for task in tasks:
            if task.error is not None:
                finish(task.record("failed", error=task.error))
            elif task.key in before:
                old = before[task.key]
                finish(task.record("skipped", **{k: old[k] for k in ("outputs", "seeds", "prompt", "mood")}))
            else:
                todo.append(task)
        for record in _run(todo, settings, workers, address):
            finish(record)
    return records


def _run(tasks: list[Task], settings: Settings, workers: int | None, address: str | None) -> Iterator[dict]:
    if not tasks:
        return iter(())
    if workers is None and address is None:
        return (run_task(task, settings) for task in tasks)
    from pipelines.entry import cluster

    return cluster.run_tasks(tasks, settings, run_task, workers=workers, address=address)
