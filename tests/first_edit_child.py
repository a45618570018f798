"""One fresh process doing what a new user's first minute does, all at once (tests/test_first_edit.py).

The page's status line (its `load` event), the upload's early work (SAM embedding, mood), a click and
the first Generate start in their own threads, as Gradio runs them, before any heavy library was
imported. `tests/site` on PYTHONPATH registers the tiny SAM variant (as for every process tests start). Prints "result: N images" or the error, and exits 0 only with a result.

    python tests/first_edit_child.py SDXL_DIR SAM_CHECKPOINT
"""

from __future__ import annotations

import sys
import tempfile
import threading
import traceback
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from cold import half_mask, make_photo, make_tiny_settings, start_fake_ollama  # noqa: E402

from pipelines.entry.workbench import Workbench  # noqa: E402  (light: no torch, no diffusers yet)
from pipelines.types import ClickPoint, EditRequest  # noqa: E402


def main(sdxl_dir: str, sam_checkpoint: str) -> int:
    assert "diffusers" not in sys.modules and "torch" not in sys.modules, "the child must start cold"
    ollama = start_fake_ollama()
    settings = make_tiny_settings(Path(tempfile.mkdtemp()), Path(sdxl_dir), Path(sam_checkpoint), ollama.url)
    studio = Workbench(settings)
    errors: list[str] = []

    def attempt(what, fn):
        try:
            fn()
        except Exception:  # noqa: BLE001 - reported below, the exit code says it failed
            errors.append(f"{what}: {traceback.format_exc(limit=-3)}")

    photo = make_photo()
    threads = [threading.Thread(target=attempt, args=("status", studio.status_lines))]  # the page's load
    threads[0].start()
    key = studio.add_photo(photo)  # the upload: SAM embedding and mood start in the background
    threads.append(threading.Thread(target=attempt, args=(
        "click", lambda: studio.predict(key, [ClickPoint(80, 60)]))))
    results = []
    request = EditRequest(image=photo, mask=half_mask(photo), keyword="forest", mood="calm",
                          prompt="a forest", num_inference_steps=2, seed=1)
    threads.append(threading.Thread(target=attempt, args=(
        "generate", lambda: results.append(studio.edit(request, "first")))))
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join()
    ollama.stop()
    if errors or not results or not results[0].images:
        print("failed:", *errors, sep="\n")
        return 1
    print(f"result: {len(results[0].images)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
