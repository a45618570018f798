"""The subject without clicks: a salient-object model (rembg's sessions), then our own picking and edge.

    model, notices = get_subject_model(settings)     # None when no model can be had (and why)
    subject = find_subject(photo, model)             # (H, W) bool, no click at all
    subject = subject_from_clicks(photo, points, model.probability(photo))   # the fallback without SAM

The model is one of rembg's sessions (u2net, u2netp, ISNet, BiRefNet...): rembg keeps each model's
preprocessing right and runs it with onnxruntime, so we only add what rembg leaves out. Its file is
ours to fetch: `ensure_subject_model` downloads it into `<checkpoint dir>/rembg/` with the same
resumable, checked download as SAM's checkpoint (rembg's own pooch download has no resume, no
progress for the page and no fast failure offline), and rembg is then pointed at that folder
(`U2NET_HOME`), so it never asks the network itself.

What we add to the model's probability map (rembg's own answer is that map cut at 0.5):
    1. picking: the part of the cut that holds the most probability is the subject; other blobs
       (a second salient thing, specks) are dropped, and the holes inside it that the model was
       unsure of (or that are specks) are filled; holes it is sure of (a kettle's handle, the
       gap between a fox's legs) stay open;
    2. the edge: the colour guided filter (He et al. 2010, as the matte uses it) moves the cut's
       outline onto the photo's own colour edges, where the model's 320- or 1024-pixel map is
       blurred. Measured on real photos with u2netp and an IS-Net export, this never lost more than
       0.007 IoU to rembg's cut on a photo; GrabCut seeded from the map (the earlier edge) lost up
       to 0.14 with IS-Net (bench/RESULTS.md).
With clicks (the fallback when SAM is missing) the clicked part is taken instead of the largest,
and GrabCut, seeded from the map, grows it: each positive click is sure subject and each negative
sure background; a click the model saw nothing under still grows a subject from the photo's
colours, with what the model did see kept out. Here GrabCut stays: with u2netp's noisy map, the
guided filter in its place lost 0.16 IoU on one photo (the fox). Holes are filled as without
clicks (the unsure ones only).

Heavy modules (rembg, onnxruntime, cv2) are imported inside the functions that use them.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pipelines.errors import one_line
from pipelines.images import guided_filter, image_hash, resize_mask
from pipelines.masks.grabcut import click_radius, run_grabcut
from pipelines.settings import SUBJECT_MODELS, Settings
from pipelines.types import ClickPoint

if TYPE_CHECKING:  # pragma: no cover
    from pipelines.downloads import ProgressFn


@dataclass(frozen=True)
class SubjectModelFile:
    """One rembg model file: where rembg publishes it, its checksum, and its size for the notices."""

    url: str
    checksum: str  # "md5:<hex>" as rembg's sessions check it
    size: int  # bytes, about (for "download X: 176 MB")


_RELEASES = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/"
# The file of each `settings.SUBJECT_MODELS` session, as rembg 2.0's sessions name and check them.
SUBJECT_MODEL_FILES = {
    "isnet-general-use": SubjectModelFile(_RELEASES + "isnet-general-use.onnx",
                                          "md5:fc16ebd8b0c10d971d3513d564d01e29", 179_000_000),
    "u2net": SubjectModelFile(_RELEASES + "u2net.onnx", "md5:60024c5c889badc19c04ad937298a77b", 176_000_000),
    "u2netp": SubjectModelFile(_RELEASES + "u2netp.onnx", "md5:8e83ca70e441ab06c318d82300c84806", 4_600_000),
    "silueta": SubjectModelFile(_RELEASES + "silueta.onnx", "md5:55e59e0d8062d2f5d013f4725ee84782", 44_000_000),
    "birefnet-general-lite": SubjectModelFile(_RELEASES + "BiRefNet-general-bb_swin_v1_tiny-epoch_232.onnx",
                                              "md5:4fab47adc4ff364be1713e97b7e66334", 224_000_000),
    "birefnet-general": SubjectModelFile(_RELEASES + "BiRefNet-general-epoch_244.onnx",
                                         "md5:7a35a0141cbbc80de11d9c9a28f52697", 973_000_000),
    "birefnet-portrait": SubjectModelFile(_RELEASES + "BiRefNet-portrait-epoch_150.onnx",
                                          "md5:c3a64a6abf20250d090cd055f12a3b67", 973_000_000),
}
assert set(SUBJECT_MODEL_FILES) == set(SUBJECT_MODELS), "settings.SUBJECT_MODELS and the files disagree"

CUT = 0.5  # rembg's own mask: the probability map cut here
SURE = 0.8  # GrabCut's sure subject / sure background beyond this distance from CUT (see refine_subject)
# Without clicks: the guided filter's radius (on the work copy) and eps for the edge, and the holes
# filled: those where the model's mean probability is at least 1 - SURE (unsure, not sure
# background), or smaller than HOLE_SPECK of the subject. Radius 2-8 measured within 0.3 % of each
# other on the real photos (tests/real/test_real_subject.py); filling every hole cost 0.13 IoU on a
# fox and 0.06 on a kettle.
EDGE_RADIUS = 4
EDGE_EPS = 1e-4
HOLE_SPECK = 0.001
WORK_SIDE = 512  # picking and the edge run on a copy whose long side is at most this (the map is coarser)
MIN_SHARE = 0.001  # a found subject smaller than this share of the photo is reported as nothing found


# ----------------------------------------------------------------------------------------------
# The model: rembg's session, a per-photo cache of its probability map
# ----------------------------------------------------------------------------------------------
class SubjectModel:
    """A rembg session and the probability maps of the last few photos (each click reuses them).

    Args:
        session: anything with rembg's `predict(image) -> [mask image "L"]` (a rembg session;
            tests may hand in their own).
        name: the model's name, for notices.
        cache_size: how many photos' maps are kept.
    """

    def __init__(self, session: Any, name: str = "custom", cache_size: int = 4) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self.session = session
        self.name = name
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # guards the cache only; rembg's sessions run concurrently

    def probability(self, image: Image.Image) -> np.ndarray:
        """The model's subject probability for each pixel: float32 (H, W) in [0, 1], as rembg gives it
        (its mask image, resized to the photo, / 255)."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        key = image_hash(image)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        mask = self.session.predict(image)[0]
        if mask.size != image.size:  # rembg resizes to the photo; a custom session might not
            mask = mask.resize(image.size, Image.Resampling.BILINEAR)
        probability = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
        probability.setflags(write=False)  # shared between callers
        with self._lock:
            self._cache[key] = probability
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return probability


def subject_model_path(settings: Settings, name: str | None = None) -> Path:
    """Where a subject model's file lives: <checkpoint dir>/rembg/<name>.onnx (rembg's file name)."""
    return settings.subject_dir / f"{name or settings.subject_model}.onnx"


def subject_model_hint(settings: Settings, name: str | None = None) -> str:
    """What to do about a missing model, e.g. "run `python -m pipelines download subject` (179 MB),
    or put isnet-general-use.onnx in checkpoints/rembg/"."""
    from pipelines.downloads import format_size

    name = name or settings.subject_model
    return (f"run `python -m pipelines download subject` ({format_size(SUBJECT_MODEL_FILES[name].size)}), "
            f"or put {name}.onnx in {settings.subject_dir}/")


_DOWNLOAD_LOCK = threading.Lock()


def ensure_subject_model(settings: Settings, on_progress: "ProgressFn | None" = None, force: bool = False) -> Path:
    """The subject model's file, downloaded first if it is missing (resumable, checked; see
    `downloads.download_checkpoint`).

    Raises:
        RuntimeError: one line: missing and may not be downloaded, or the download failed.
    """
    from pipelines.downloads import download_checkpoint

    path = subject_model_path(settings)
    if path.is_file():
        return path
    if not (settings.subject_auto_download or force):
        raise RuntimeError(f"subject model {path} does not exist and BACKDROP_SUBJECT_AUTO_DOWNLOAD is off")
    file = SUBJECT_MODEL_FILES[settings.subject_model]
    with _DOWNLOAD_LOCK:
        if not path.is_file():
            download_checkpoint(file.url, path, file.checksum, on_progress=on_progress)
    return path


_ENV_LOCK = threading.Lock()  # U2NET_HOME is process-wide: one session built at a time


def load_subject_model(path: Path, name: str) -> SubjectModel:
    """rembg's session for the model file at `path` (named as rembg names it), on onnxruntime's CPU
    or GPU provider as rembg picks. The file must exist: rembg then asks no network."""
    if name not in SUBJECT_MODEL_FILES:
        raise ValueError(f"unknown subject model {name!r} (choose {', '.join(SUBJECT_MODELS)})")
    path = Path(path)
    if path.name != f"{name}.onnx" or not path.is_file():
        raise ValueError(f"subject model file {path} does not exist (expected {name}.onnx)")
    from rembg import new_session

    with _ENV_LOCK:  # rembg finds <U2NET_HOME>/<name>.onnx and downloads nothing
        before = os.environ.get("U2NET_HOME")
        os.environ["U2NET_HOME"] = str(path.parent)
        try:
            session = new_session(name)
        except Exception as err:  # onnxruntime's own, multi-line: a damaged or foreign file
            raise RuntimeError(f"{path} is not a usable {name} model ({one_line(err)[:160]}): delete it and "
                               "download it again") from err
        finally:
            if before is None:
                os.environ.pop("U2NET_HOME", None)
            else:
                os.environ["U2NET_HOME"] = before
    return SubjectModel(session, name)


_LOADED: dict[tuple[str, str, bool], tuple[SubjectModel | None, list[str], float]] = {}
_LOAD_LOCK = threading.Lock()


def get_subject_model(settings: Settings, on_progress: "ProgressFn | None" = None, download: bool = True
                      ) -> tuple[SubjectModel | None, list[str]]:
    """The shared subject model the settings name, with what the person should know.

    Order: the named model's file; else its download (when allowed, and `download`); else any other
    known model already in the folder (a notice says which). None with a one-line notice naming the
    download when there is none. A failure is remembered until a model file appears in the folder,
    so an offline machine does not try the download again on every click.

    `download=False` is for the click fallback: a click must not wait minutes for a download the
    person did not ask for; Find subject, `--subject auto` and batch rows download.
    """
    key = (str(settings.subject_dir), settings.subject_model, download)
    folder_state = _folder_state(settings.subject_dir)
    with _LOAD_LOCK:
        cached = _LOADED.get(key)
        if cached is not None and (cached[0] is not None or cached[2] == folder_state):
            return cached[0], list(cached[1])
        notices: list[str] = []
        try:
            if download:
                path = ensure_subject_model(settings, on_progress=on_progress)
            elif not (path := subject_model_path(settings)).is_file():
                raise RuntimeError(f"{path} is not downloaded")
            model = load_subject_model(path, settings.subject_model)
        except RuntimeError as err:
            model = None
            present = [n for n in SUBJECT_MODELS if n != settings.subject_model
                       and subject_model_path(settings, n).is_file()]
            for name in present:  # another model already on disk, the first that loads
                try:
                    model = load_subject_model(subject_model_path(settings, name), name)
                except RuntimeError:
                    continue
                notices.append(f"subject model {settings.subject_model} is missing ({err}): using {name}")
                break
            else:  # the named file is there but does not load: say why; else what to download
                notices.append(one_line(err) if subject_model_path(settings).is_file()
                               else f"no subject model: {subject_model_hint(settings)}")
        _LOADED[key] = (model, notices, _folder_state(settings.subject_dir))
        return model, list(notices)


def _folder_state(folder: Path) -> float:
    try:
        return folder.stat().st_mtime
    except OSError:
        return -1.0


# ----------------------------------------------------------------------------------------------
# Picking the subject and refining its edge
# ----------------------------------------------------------------------------------------------
def rembg_cut(probability: np.ndarray) -> np.ndarray:
    """rembg's own answer, the baseline: the probability map cut at 0.5, (H, W) bool."""
    return np.asarray(probability) >= CUT


def find_subject(image: Image.Image, model: SubjectModel) -> np.ndarray:
    """The subject of a photo without any click: (H, W) bool, True = subject.

    Raises:
        ValueError: the model sees no subject in the photo.
    """
    subject = refine_subject(image, model.probability(image))
    if subject.sum() < MIN_SHARE * subject.size:
        raise ValueError(f"the subject model ({model.name}) found no subject in this photo: click it instead")
    return subject


def refine_subject(image: Image.Image, probability: np.ndarray,
                   points: list[ClickPoint] | tuple[ClickPoint, ...] = ()) -> np.ndarray:
    """Our subject from the model's probability map: pick the part(s), fill holes, refine the edge
    (the guided filter without clicks, GrabCut grown from the clicks with them).

    Args:
        image: the RGB photo (W, H).
        probability: float (H, W) in [0, 1], the model's map (`SubjectModel.probability`).
        points: clicks, each (X, Y) in photo pixels, label 1 = subject, 0 = not. Without any, the
            part of the cut holding the most probability is the subject; with positive clicks, the
            parts under them (or, where the model saw nothing under a click, what GrabCut grows
            from it).

    Returns:
        (H, W) bool at the photo's size, True = subject.
    """
    import cv2

    probability = np.asarray(probability, dtype=np.float32)
    width, height = image.size
    if probability.shape != (height, width):
        raise ValueError(f"probability map shape {probability.shape} does not match the photo ({height}, {width})")
    # 1. Work on a copy of at most WORK_SIDE: the map's detail is coarser, GrabCut's cost is per pixel.
    scale = min(1.0, WORK_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if scale < 1.0:
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        probability = cv2.resize(probability, size, interpolation=cv2.INTER_AREA)
    h, w = probability.shape
    clicks = [(min(w - 1, int(p.x * scale)), min(h - 1, int(p.y * scale)), p.label) for p in points]
    positives = [(x, y) for x, y, label in clicks if label == 1]

    # 2. Pick: the cut's 8-connected parts under the positive clicks, else the one with the most
    # probability (a second salient thing and specks go).
    cut = probability >= CUT
    count, labels = cv2.connectedComponents(cut.astype(np.uint8), connectivity=8)
    if not positives:
        # 3. Without clicks: fill the holes the model was unsure of, and snap the edge to the photo's.
        mass = np.bincount(labels.ravel(), weights=probability.ravel(), minlength=count)
        picked = _fill_holes(labels == 1 + int(np.argmax(mass[1:])), probability) if count > 1 else cut
        if not picked.any():
            return np.zeros((height, width), dtype=bool)
        rgb01 = rgb.astype(np.float32) / 255.0
        edge = guided_filter(rgb01, picked.astype(np.float32), EDGE_RADIUS, EDGE_EPS) >= 0.5
        return resize_mask(edge, (width, height)) >= 0.5
    picked = _fill_holes(np.isin(labels, sorted({int(labels[y, x]) for x, y in positives} - {0})), probability)

    # 3. With clicks, GrabCut seeded from the map: inside the picked part, sure subject where the
    # model is sure (eroded, so a blurred rim stays open), probable subject elsewhere; outside it,
    # sure background where the model is sure of that, probable background elsewhere. Other salient
    # parts the model saw are background (they were not picked). Clicks are sure, a small disk each.
    kernel = np.ones((5, 5), np.uint8)
    seeds = np.full((h, w), cv2.GC_PR_BGD, dtype=np.uint8)
    seeds[picked] = cv2.GC_PR_FGD
    seeds[(cv2.erode((probability >= SURE).astype(np.uint8), kernel) > 0) & picked] = cv2.GC_FGD
    missed = any(labels[y, x] == 0 for x, y in positives)
    if missed:
        # The model saw nothing where the person clicked: its "background" is no evidence there, and
        # what it did see is something else. The subject grows from the click's colours.
        seeds[cut & ~picked] = cv2.GC_BGD
    else:
        seeds[cv2.erode((probability < 1 - SURE).astype(np.uint8), kernel) > 0] = cv2.GC_BGD
    radius = click_radius((h, w))
    for x, y, label in clicks:
        cv2.circle(seeds, (x, y), radius, cv2.GC_FGD if label == 1 else cv2.GC_BGD, thickness=-1)
    subject = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
    if subject.any() and not subject.all():  # GrabCut needs both to learn from
        subject = run_grabcut(rgb, seeds, 4)

    # 4. Keep what holds a positive click, fill its unsure holes, back to the photo's size.
    count, labels = cv2.connectedComponents(subject.astype(np.uint8), connectivity=8)
    keep = sorted({int(labels[y, x]) for x, y in positives} - {0})
    return resize_mask(_fill_holes(np.isin(labels, keep), probability), (width, height)) >= 0.5


def subject_from_clicks(image: Image.Image, points: list[ClickPoint], probability: np.ndarray) -> np.ndarray:
    """The fallback without SAM: the subject the clicks point at, helped by the model's map.

    Args:
        image: the RGB photo.
        points: clicks, each (X, Y) in photo pixels; at least one positive (checked by the caller,
            `masking.check_points`).
        probability: the subject model's map for this photo, float (H, W) in [0, 1].

    Returns:
        (H, W) bool, True = subject.
    """
    return refine_subject(image, probability, points)


def _fill_holes(subject: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """Fill the holes (4-connected background parts not touching the border) the model was unsure of
    (mean probability at least 1 - SURE) and the specks (at most HOLE_SPECK of the subject)."""
    import cv2

    if not subject.any():
        return subject
    count, labels = cv2.connectedComponents((~subject).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    holes = np.setdiff1d(np.arange(1, count), border)
    if len(holes):
        sizes = np.bincount(labels.ravel(), minlength=count)[holes]
        mean = np.bincount(labels.ravel(), weights=probability.ravel(), minlength=count)[holes] / sizes
        holes = holes[(mean >= 1 - SURE) | (sizes <= HOLE_SPECK * subject.sum())]
    return subject | np.isin(labels, holes)


