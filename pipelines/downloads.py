"""Every model download in one place: the SAM checkpoint and SDXL, with progress, resume, fast offline.

    folder = sdxl_folder(settings)                    # a local folder: the cache first, then the hub
    tokenizers = sdxl_folder(settings, tokenizers_only=True)   # just SDXL's tokenizers (a few MB)
    path = ensure_sam_checkpoint(settings)            # the SAM checkpoint, downloaded if missing
    paths = ensure_sam_files(settings)                # ... and an ONNX variant's decoder
    python -m pipelines download [sdxl|sam|all]       # prepare a machine once, then run offline

Progress: `on_progress(bytes_done, bytes_total)` (total 0 when unknown), for the page's bar; a tqdm
bar with bytes and speed goes to stderr for the command line.

SDXL comes from the Hugging Face hub through `huggingface_hub.snapshot_download` (it resumes
interrupted files and shares the cache with every other tool), only the files the app loads: the
fp16 weights where the repository has them. The local cache is asked first. When it lacks the
files, the hub is asked once; if that connection fails, nothing else asks it during that attempt,
and one line names the model and the fix within seconds (instead of transformers' per-file
retries with back-off, minutes offline).

The SAM checkpoint is a plain HTTPS file: written to `<name>.part` beside its destination, resumed
with an HTTP Range request after an interruption, checked (size, SHA-256 prefix from its name), and
only then moved into place.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pipelines.errors import one_line
from pipelines.settings import SAM_CHECKPOINT_NAMES, SAM_DECODER_NAMES, Settings

ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total; total 0 when unknown)
DOWNLOAD_TIMEOUT = 10.0  # seconds to connect, and the longest a read may stall; offline fails fast
CHUNK = 1 << 20


_UNITS = (("GB", 1e9), ("MB", 1e6), ("kB", 1e3))  # decimal, as download sizes are given


def format_size(n: int) -> str:
    """Bytes for people: "6.9 GB", "375 MB", "12 kB"."""
    for unit, scale in _UNITS:
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if unit == "GB" else f"{n / scale:.0f} {unit}"
    return f"{n} B"


def format_progress(done: int, total: int) -> str:
    """ "2.1 / 6.9 GB" (in the total's unit), or "2.1 GB" when the total is unknown."""
    if not total:
        return format_size(done)
    unit, scale = next(((u, s) for u, s in _UNITS if total >= s), ("B", 1))
    return f"{done / scale:.1f} / {total / scale:.1f} {unit}"


def _bar(total: int | None, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total or None, desc=desc, unit="B", unit_scale=True, unit_divisor=1000,
                file=sys.stderr, leave=False)


# ----------------------------------------------------------------------------------------------
# SAM
# ----------------------------------------------------------------------------------------------
# The official checkpoints: file name -> (checksum, size in bytes or None). The .pth names end in
# the first hex digits of the file's SHA-256 (torch-hub style), so the hash prefix comes from the
# name itself; the sizes are what dl.fbaipublicfiles.com serves. The ONNX files are rembg's: their
# MD5s are the ones rembg pins (rembg/sessions/sam.py, SAM_CHECKSUMS); the vit_b pair's sizes are
# what its release serves (the others' are not known here, so only their MD5 is checked).
SAM_CHECKPOINT_SIZES = {
    "sam_vit_h_4b8939.pth": 2564550879,
    "sam_vit_l_0b3195.pth": 1249524607,
    "sam_vit_b_01ec64.pth": 375042383,
}
SAM_ONNX_DOWNLOADS: dict[str, tuple[str, int | None]] = {
    "sam_vit_b_01ec64.encoder.quant.onnx": ("md5:26fc0e01d2fa34ed2d3f91259118482d", 108836115),
    "sam_vit_b_01ec64.decoder.quant.onnx": ("md5:45391530307d1aee79b2a1507769e6c7", 8755366),
    "sam_vit_l_0b3195.encoder.quant.onnx": ("md5:83f7fe08c2f8b94b6d08c3e44cf1de0e", None),
    "sam_vit_l_0b3195.decoder.quant.onnx": ("md5:e78ca201f5ae92288945623f48088b7c", None),
    "sam_vit_h_4b8939.encoder.quant.onnx": ("md5:391503beb5e5d7d1ae6f55d0cecabd50", None),
    "sam_vit_h_4b8939.decoder.quant.onnx": ("md5:4c86ebeecbe2e6325203b641b8702a5b", None),
}
SAM_DOWNLOADS: dict[str, tuple[str, int | None]] = {
    **{name: (re.search(r"_([0-9a-f]+)\.pth$", name).group(1), SAM_CHECKPOINT_SIZES[name])
       for name in SAM_CHECKPOINT_NAMES.values() if name.endswith(".pth")},
    **SAM_ONNX_DOWNLOADS,
}
_SAM_LOCK = threading.Lock()  # two sessions do not download the same 2.5 GB twice


def sam_download_size(name: str) -> int | None:
    """The size of an official file by name; None for any other name, or when it is not known."""
    return SAM_DOWNLOADS[name][1] if name in SAM_DOWNLOADS else None


def sam_files(settings: Settings) -> list[Path]:
    """The files SAM loads from: the checkpoint, or the ONNX variants' encoder and decoder."""
    return [Path(settings.sam_checkpoint)] + ([Path(settings.sam_decoder)] if settings.sam_is_onnx else [])


def sam_checkpoint_hint(settings: Settings) -> str:
    """What to do about a missing SAM checkpoint, e.g. "put sam_vit_h_4b8939.pth in checkpoints/, or
    run `python -m pipelines download sam`: 2.6 GB"."""
    paths = sam_files(settings)
    names = [path.name if path.name in SAM_DOWNLOADS else None for path in paths]
    if settings.sam_model_type in SAM_CHECKPOINT_NAMES:
        official = [SAM_CHECKPOINT_NAMES[settings.sam_model_type]]
        official += [SAM_DECODER_NAMES[settings.sam_model_type]] if settings.sam_is_onnx else []
        names = [name or default for name, default in zip(names, official)]
    if None in names:  # a variant without official files
        return f"put its {'files' if len(paths) > 1 else 'checkpoint'} at {' and '.join(map(str, paths))}"
    sizes = [sam_download_size(name) for name in names]
    size = f": {format_size(sum(sizes))}" if None not in sizes else ""
    return f"put {' and '.join(names)} in {paths[0].parent}/, or run `python -m pipelines download sam`{size}"


def ensure_sam_checkpoint(settings: Settings, on_progress: ProgressFn | None = None,
                          force: bool = False) -> Path:
    """The SAM checkpoint's path (the ONNX variants': the encoder's), downloading the official file
    first if it is missing. See `ensure_sam_file`."""
    return ensure_sam_file(Path(settings.sam_checkpoint), settings, on_progress, force)


def ensure_sam_files(settings: Settings, on_progress: ProgressFn | None = None, force: bool = False) -> list[Path]:
    """Every file SAM loads from (`sam_files`), each downloaded first if it is missing."""
    return [ensure_sam_file(path, settings, on_progress, force) for path in sam_files(settings)]


def ensure_sam_file(path: Path, settings: Settings, on_progress: ProgressFn | None = None,
                    force: bool = False) -> Path:
    """`path`, downloading the official file of that name first if it is missing.

    Only official file names (`SAM_DOWNLOADS`) are downloaded: the .pth files from
    `settings.sam_download_base` + name, the ONNX files from `settings.sam_onnx_download_base` +
    name (see `download_checkpoint`).

    Args:
        path: a SAM checkpoint, or an ONNX variant's encoder or decoder.
        settings: `sam_download_base`, `sam_onnx_download_base`, `sam_auto_download` are read.
        on_progress: called as on_progress(bytes_done, bytes_total) while downloading.
        force: download even when `sam_auto_download` is off (the download command).

    Returns:
        `path`, which now exists.

    Raises:
        RuntimeError: one line: the file is missing and may not or cannot be downloaded, or the
            download failed or was damaged.
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.name not in SAM_DOWNLOADS:
        family = [n for n in SAM_DOWNLOADS if (n in SAM_ONNX_DOWNLOADS) == (path.suffix == ".onnx")]
        raise RuntimeError(f"SAM checkpoint {path} does not exist (only the official files "
                           f"{', '.join(family)} are downloaded)")
    if not (settings.sam_auto_download or force):
        raise RuntimeError(f"SAM checkpoint {path} does not exist and BACKDROP_SAM_AUTO_DOWNLOAD is off")
    checksum, size = SAM_DOWNLOADS[path.name]
    base = settings.sam_onnx_download_base if path.name in SAM_ONNX_DOWNLOADS else settings.sam_download_base
    url = base.rstrip("/") + "/" + path.name
    with _SAM_LOCK:
        if not path.is_file():
            download_checkpoint(url, path, checksum, size, on_progress=on_progress)
    return path


def download_checkpoint(url: str, dest: Path, checksum: str, expected_size: int | None = None,
                        on_progress: ProgressFn | None = None, timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Download `url` to `dest` through `<dest>.part`, resuming a partial file, checking the result.

    A `.part` file left by an interrupted download is continued with an HTTP Range request (a server
    that ignores Range sends the whole file, which then replaces it). When the bytes are all there,
    the size and the checksum are checked over the whole file and only then is it moved to
    `dest` (atomically: a reader sees no file or the whole file). A damaged file is deleted; a cut
    connection leaves the `.part` file for the next try.

    Args:
        url: the file's address.
        dest: where it ends up; its folder is created.
        checksum: the first hex digits of the file's SHA-256, or "md5:" and its whole MD5 (as rembg
            publishes its files' sums).
        expected_size: its size in bytes, when known.
        on_progress: called as on_progress(bytes_done, bytes_total), bytes_total 0 when unknown.
        timeout: seconds to connect, and the longest any single read may stall.

    Returns:
        `dest`.

    Raises:
        RuntimeError: one line; `dest` is left untouched.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    hint = f"put {dest.name} in {dest.parent}/ yourself"
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.is_file() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()
        offset = 0

    algorithm, expected = checksum.split(":", 1) if checksum.startswith("md5:") else ("sha256", checksum)
    digest = hashlib.new(algorithm)
    if offset:  # the bytes already there count towards the hash
        with open(part, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
    total = expected_size
    if expected_size is None or offset < expected_size:
        total, digest = _fetch(url, part, offset, digest, expected_size, on_progress, timeout, hint)

    found = digest.hexdigest()
    if not found.startswith(expected):
        part.unlink(missing_ok=True)  # resuming would not mend it
        label = {"sha256": "SHA-256", "md5": "MD5"}[algorithm]
        raise RuntimeError(f"downloaded {dest.name} is damaged: its {label} starts with "
                           f"{found[:len(expected)]}, expected {expected} ({hint})")
    if total is not None and part.stat().st_size != total:
        raise RuntimeError(f"download of {url} stopped at {part.stat().st_size} of {total} bytes ({hint})")
    os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, offset: int, digest, expected_size: int | None,
           on_progress: ProgressFn | None, timeout: float, hint: str) -> tuple[int | None, "hashlib._Hash"]:
    """Append the bytes from `offset` on to `part`, updating `digest`. Returns the file's total size
    and the digest of the whole file (a fresh one when the download starts over)."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the server disagrees about the partial file: start over
            part.unlink()
            return _fetch(url, part, 0, hashlib.new(digest.name), expected_size, on_progress, timeout, hint)
        raise RuntimeError(f"could not download {url}: HTTP {err.code} {err.reason} ({hint})") from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise RuntimeError(f"could not download {url}: {reason} ({hint})") from err

    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if response.status == 206:
            match = re.match(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise RuntimeError(f"{url} answered a resume with the wrong range ({hint})")
            total: int | None = int(match.group(2))
        else:  # 200: the whole file (the server ignored Range, or this is the first try)
            if offset:
                digest = hashlib.new(digest.name)  # hashlib objects cannot be reset in place
            offset, total = 0, length
        if total is not None and expected_size is not None and total != expected_size:
            raise RuntimeError(f"{url} is {total} bytes, expected {expected_size} ({hint})")
        total = total if total is not None else expected_size
        done = offset
        bar = _bar(total, f"downloading {part.name.removesuffix('.part')}")
        bar.update(done)
        try:
            with open(part, "ab" if offset else "wb") as handle:
                while chunk := response.read(CHUNK):
                    handle.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
                    if on_progress is not None:
                        on_progress(done, total or 0)
        except (OSError, http.client.HTTPException) as err:  # a stalled or cut connection, a full disk
            raise RuntimeError(f"download of {url} stopped at {done} of {total or '?'} bytes "
                               f"({err or type(err).__name__}); run again to resume ({hint})") from err
        finally:
            bar.close()
    if total is not None and done != total:
        raise RuntimeError(f"download of {url} stopped at {done} of {total} bytes; run again to resume ({hint})")
    return total, digest


# ----------------------------------------------------------------------------------------------
# SDXL
# ----------------------------------------------------------------------------------------------
# The parts the app loads (sdxl_models.load_sdxl) and the name of each one's weights file.
SDXL_WEIGHTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model",
                "text_encoder": "model", "text_encoder_2": "model"}
TOKENIZER_FILES = ["tokenizer/*", "tokenizer_2/*"]
SDXL_SMALL_FILES = ["model_index.json", "scheduler/*", *TOKENIZER_FILES, *(f"{p}/config.json" for p in SDXL_WEIGHTS)]
_DEFAULT_SDXL = Settings.__dataclass_fields__["sdxl_model"].default
_DEFAULT_SDXL_BYTES = 6_940_000_000  # its fp16 files: UNet 5.1 GB, encoders 1.6 GB, VAE 0.2 GB
_RESOLVED: dict[tuple[str, bool], Path] = {}
_SDXL_LOCK = threading.Lock()  # one SDXL download at a time


def is_local_model(model: str) -> bool:
    """True when `model` names a folder (existing, or written as a path) rather than a hub id."""
    return Path(model).expanduser().is_dir() or model.startswith(("/", ".", "~"))


def weights_variant(folder: str | Path) -> str | None:
    """ "fp16" when `folder`'s UNet has only the fp16 weights file (as `download sdxl` fetches), else
    None: the `variant` that diffusers' and transformers' `from_pretrained` need to find the files."""
    unet = Path(folder) / "unet"
    fp16 = (unet / "diffusion_pytorch_model.fp16.safetensors").is_file()
    return "fp16" if fp16 and not (unet / "diffusion_pytorch_model.safetensors").is_file() else None


def _complete(folder: Path, tokenizers_only: bool) -> bool:
    """Whether a snapshot folder holds what the app loads (tokenizers; or everything)."""
    needed = ["tokenizer/tokenizer_config.json", "tokenizer_2/tokenizer_config.json"]
    if not tokenizers_only:
        needed += ["model_index.json", "scheduler/scheduler_config.json", *(f"{p}/config.json" for p in SDXL_WEIGHTS)]
    if not all((folder / name).is_file() for name in needed):
        return False
    # A tokenizer's vocabulary: the slow files (vocab.json, as on the hub) or the fast tokenizer.json.
    if not all(any((folder / t / f).is_file() for f in ("vocab.json", "tokenizer.json")) for t in ("tokenizer", "tokenizer_2")):
        return False
    return tokenizers_only or all(
        any((folder / part / f"{stem}{v}.safetensors").is_file() for v in (".fp16", ""))
        for part, stem in SDXL_WEIGHTS.items())


def _cached(model: str, tokenizers_only: bool) -> Path | None:
    """The complete local snapshot of a hub model, asking nothing of the network."""
    from huggingface_hub import snapshot_download

    patterns = TOKENIZER_FILES if tokenizers_only else SDXL_SMALL_FILES
    try:
        folder = Path(snapshot_download(model, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here means "not in the cache"
        return None
    return folder if _complete(folder, tokenizers_only) else None


def _unavailable(model: str, why: str) -> str:
    return (f"SDXL {model} is not downloaded and {why}: set BACKDROP_SDXL_MODEL=/local/folder, "
            f"or run `python -m pipelines download sdxl` once with internet")


def sdxl_folder(settings: Settings, on_progress: ProgressFn | None = None,
                tokenizers_only: bool = False) -> Path:
    """The local folder of the SDXL model the settings name, downloading what is missing.

    A local folder is returned as it is. For a hub id: the local cache first (no network); else
    one question to the hub, and if it answers, a download of the files the app loads (the fp16
    weights where the repository has them), resuming interrupted files.

    Args:
        settings: `sdxl_model` is read.
        on_progress: called as on_progress(bytes_done, bytes_total) while downloading.
        tokenizers_only: fetch just the two tokenizers (what counting tokens needs).

    Returns:
        A folder in diffusers' layout (the hub cache's snapshot folder for hub ids).

    Raises:
        RuntimeError: one line naming the model and the fix: the folder does not exist, or the
            model is neither cached nor reachable, or the download failed.
    """
    model = settings.sdxl_model
    if is_local_model(model):
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise RuntimeError(f"SDXL folder {model} does not exist: set BACKDROP_SDXL_MODEL to a diffusers "
                               f"folder, or to a Hugging Face id such as {_DEFAULT_SDXL}")
        return folder
    for key in ((model, False), (model, tokenizers_only)):
        if key in _RESOLVED:
            return _RESOLVED[key]
    with _SDXL_LOCK:
        folder = _cached(model, tokenizers_only) or _download_sdxl(model, on_progress, tokenizers_only)
        _RESOLVED[model, tokenizers_only] = folder
    return folder


def _download_sdxl(model: str, on_progress: ProgressFn | None, tokenizers_only: bool) -> Path:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, OfflineModeIsEnabled, RepositoryNotFoundError

    # 1. One question to the hub. If it fails, nothing else asks it during this attempt.
    try:
        info = HfApi().model_info(model, files_metadata=True, timeout=DOWNLOAD_TIMEOUT)
    except OfflineModeIsEnabled as err:
        raise RuntimeError(_unavailable(model, "HF_HUB_OFFLINE is set")) from err
    except (RepositoryNotFoundError, GatedRepoError) as err:
        raise RuntimeError(f"SDXL {model} was not found on the Hugging Face hub (or needs `huggingface-cli "
                           f"login`): set BACKDROP_SDXL_MODEL to a model id or a local folder") from err
    except Exception as err:  # noqa: BLE001 - connection refused, DNS, time-out, hub down: all "unreachable"
        raise RuntimeError(_unavailable(model, f"the Hugging Face hub cannot be reached ({one_line(err)[:120]})")) from err

    # 2. The files the app loads, fp16 where the repository has them, and their size.
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
    files = _sdxl_files(sizes, tokenizers_only)
    total = sum(sizes[f] for f in files)

    # 3. Download (hf_hub_download resumes `.incomplete` files and skips complete ones).
    bar = _bar(total, f"downloading {model}")
    done = [0]

    def on_bytes(n: int) -> None:
        done[0] += n
        bar.update(n)
        if on_progress is not None:
            on_progress(min(done[0], total), total)

    try:
        folder = snapshot_download(model, revision=info.sha, allow_patterns=files, etag_timeout=DOWNLOAD_TIMEOUT,
                                   tqdm_class=_byte_hook(on_bytes))
    except Exception as err:  # noqa: BLE001 - a cut connection, a full disk: one line, resumable
        raise RuntimeError(f"download of SDXL {model} stopped at {format_progress(done[0], total)} "
                           f"({one_line(err)[:120]}); run again to resume") from err
    finally:
        bar.close()
    folder = Path(folder)
    if not _complete(folder, tokenizers_only):
        raise RuntimeError(f"SDXL {model} lacks files the app needs (unet, vae, text_encoder, text_encoder_2 "
                           "safetensors, tokenizers, scheduler): set BACKDROP_SDXL_MODEL to a diffusers model")
    return folder


def _sdxl_files(sizes: dict[str, int], tokenizers_only: bool) -> list[str]:
    """Which of a repository's files to fetch: configs and tokenizers, and each part's weights in
    fp16 when the repository has them (half the bytes; the loader upcasts on a CPU)."""
    import fnmatch

    patterns = TOKENIZER_FILES if tokenizers_only else SDXL_SMALL_FILES
    files = [f for f in sizes if any(fnmatch.fnmatch(f, p) for p in patterns)]
    if not tokenizers_only:
        for part, stem in SDXL_WEIGHTS.items():
            fp16, plain = f"{part}/{stem}.fp16.safetensors", f"{part}/{stem}.safetensors"
            files += [fp16] if fp16 in sizes else [plain] if plain in sizes else []
    return sorted(files)


def _byte_hook(on_bytes: Callable[[int], None]):
    """A tqdm class for `snapshot_download` that forwards the bytes written to disk to `on_bytes`.

    snapshot_download sums every file's bytes into one bar named "huggingface_hub.snapshot_download";
    the other bars it makes (files done, network transfer) are ignored. None of them is drawn: the
    caller draws its own.
    """
    from huggingface_hub.utils import tqdm as hf_tqdm

    class ByteHook(hf_tqdm):
        def __init__(self, *args, **kwargs):
            self._forward = kwargs.get("name") == "huggingface_hub.snapshot_download"
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            if self._forward and n:
                on_bytes(int(n))
            return super().update(n)

    return ByteHook


def sdxl_missing(settings: Settings) -> str | None:
    """What is missing of SDXL, for the status line, asking nothing of the network; None when ready.

    E.g. "SDXL stabilityai/stable-diffusion-xl-base-1.0 is not downloaded yet (6.9 GB): run `python -m
    pipelines download sdxl`, or it downloads on the first Generate".
    """
    model = settings.sdxl_model
    if is_local_model(model):
        return None if Path(model).expanduser().is_dir() else f"no SDXL folder at {model}"
    if (model, False) in _RESOLVED or _cached(model, tokenizers_only=False) is not None:
        return None
    size = f" ({format_size(_DEFAULT_SDXL_BYTES)})" if model == _DEFAULT_SDXL else ""
    return (f"SDXL {model} is not downloaded yet{size}: run `python -m pipelines download sdxl`, "
            "or it downloads on the first Generate")
