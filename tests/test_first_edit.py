"""The first Generate after a start gives a result (issue: "cannot import name 'DDIMScheduler' from
'diffusers'" at the first Generate, every time it followed the upload at once).

Each run is a fresh process (tests/first_edit_child.py) whose status line, upload work, click and
first edit start together before any heavy library is imported; `pipelines/libraries.py` says why
that failed. Twenty fresh starts, two at a time: all twenty must give a result.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHILD = Path(__file__).resolve().parent / "first_edit_child.py"
STARTS = 20


def _fresh_start(sdxl_dir: Path, sam_checkpoint: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "BACKDROP_SAFETY_CHECKER": "off", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(CHILD), str(sdxl_dir), str(sam_checkpoint)], env=env,
                          capture_output=True, text=True, timeout=600)


def test_twenty_fresh_starts_each_give_a_result_on_the_first_generate(tiny_sdxl_dir, tiny_sam_checkpoint):
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda _: _fresh_start(tiny_sdxl_dir, tiny_sam_checkpoint), range(STARTS)))
    failed = [run for run in runs if run.returncode != 0]
    assert not failed, f"{len(failed)} of {STARTS} first edits failed; the first:\n" + (
        failed[0].stdout[-3000:] + failed[0].stderr[-3000:])
    assert all("result: 1 images" in run.stdout for run in runs)


def test_the_libraries_are_imported_once_and_later_calls_return_at_once():
    code = ("import threading, sys; from pipelines import libraries\n"
            "ts = [threading.Thread(target=libraries.ensure_imported) for _ in range(3)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "assert libraries.is_ready() and 'diffusers.schedulers' in sys.modules\n"
            "from diffusers import DDIMScheduler; from pipelines.diffusion.blending import encode_image\n"
            "print('ok')")
    run = subprocess.run([sys.executable, "-c", code], cwd=CHILD.parent.parent, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(CHILD.parent.parent)})
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_importing_the_libraries_keeps_the_processs_torch_threads():
    """pymatting's import (through rembg) sets torch's thread count to the machine's; a Ray worker's
    images then stopped matching the same edit run in one thread (test_batch's Ray test)."""
    code = ("import torch; torch.set_num_threads(1)\n"
            "from pipelines import libraries; libraries.ensure_imported()\n"
            "import sys; print(torch.get_num_threads(), 'pymatting' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=CHILD.parent.parent, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(CHILD.parent.parent)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["1", "True"]
