"""The heavy libraries, imported once, in one thread, before any request uses them.

Why: diffusers and transformers make themselves lazy. At the end of their `__init__.py` they put a
`_LazyModule` in `sys.modules` in place of the module being executed, and their sub-packages
(`diffusers.models`, `diffusers.schedulers`, `transformers.models.clip`, ...) do the same. When a
second thread runs `from diffusers import DDIMScheduler` while a first is still executing
diffusers' `__init__.py`, CPython waits for that import to finish but then hands the second thread
the module object it found *before* waiting: the half-made plain module, not the lazy one that
replaced it, and the import fails with "cannot import name 'DDIMScheduler' from 'diffusers'". On
the page this happened at the first Generate after an upload: the page's status line (loading
`pipelines.diffusion.sdxl_models`) and the upload's early work were importing while Generate imported
`pipelines.diffusion.blending`. Once a package is fully imported, later threads get the lazy module and its
attribute look-ups import through `importlib`, which is safe.

So the entry points call `ensure_imported()` before they touch a stage that uses these libraries:
the first caller imports them all, under one lock; the others wait for it; later calls return at
once. The page starts it in the background at launch (`start_in_background`), so it is usually
done before the first click.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
import time

log = logging.getLogger(__name__)

# Every library (and sub-package) a stage imports lazily, and our modules that import them at
# module level, in the order a first edit meets them.
REQUIRED = (
    "torch",
    "transformers",
    "diffusers",
    "diffusers.models",
    "diffusers.schedulers",
    "diffusers.loaders",
    "diffusers.models.attention_processor",
    "diffusers.utils.torch_utils",
    "huggingface_hub",
    "compel",
    "peft",
    "segment_anything",
    "segment_anything.modeling",
    "segment_anything.utils.transforms",
    "pipelines.diffusion.sdxl_models",
    "pipelines.diffusion.blending",
)
OPTIONAL = ("pymatting", "nudenet", "onnxruntime", "rembg")  # imported when installed

_lock = threading.Lock()
_done = threading.Event()
_seconds: float | None = None


def ensure_imported() -> None:
    """Import every heavy library once; callers from other threads wait until that is done.

    Raises:
        ImportError: a required library is missing (the message names it); the next call tries again.
    """
    global _seconds
    if _done.is_set():
        return
    with _lock:
        if _done.is_set():
            return
        start = time.perf_counter()
        torch = importlib.import_module("torch")
        threads = torch.get_num_threads()  # the process's own (Ray gives a CPU worker one)
        for name in REQUIRED:
            importlib.import_module(name)
        for name in OPTIONAL:
            if importlib.util.find_spec(name) is not None:
                try:
                    importlib.import_module(name)
                except Exception as err:  # an optional library that fails to import is reported where it is used
                    log.warning("optional library %s failed to import: %s", name, err)
        # Importing pymatting (rembg imports it) sets torch's thread count to the machine's (measured:
        # 1 -> 2 here); CPU convolutions round differently with another count, so a Ray worker's
        # images would no longer match the same edit run in one thread.
        torch.set_num_threads(threads)
        _seconds = time.perf_counter() - start
        _done.set()
        log.info("libraries imported in %.1f s", _seconds)


def is_ready() -> bool:
    """True once `ensure_imported` has finished."""
    return _done.is_set()


def start_in_background() -> threading.Thread:
    """Run `ensure_imported` in a daemon thread (the page at launch); a failure is logged and the
    first request that needs the libraries tries again and reports it."""

    def run() -> None:
        try:
            ensure_imported()
        except Exception as err:
            log.warning("importing the libraries failed: %s", err)

    thread = threading.Thread(target=run, name="backdrop-import", daemon=True)
    thread.start()
    return thread
