"""Memory over many edits in one process (tiny models, CPU): the table behind issue 13.5.

Drives `pipelines.studio.Studio` as the page does (upload, click, mood, Generate) through
`tests/test_soak.py`'s `soak`: two sessions taking turns, each with a new photo every 3 edits, one
edit cancelled half-way, the fake Ollama answering. After each edit and a garbage collection it
records the process's resident memory (psutil RSS), threads and open files.

    python bench/bench_soak.py [--edits 40] [--warm-up 5] [--cancel-at 20] [--steps 1] [--edge matte]
                               [--checker note]

Prints a Markdown table: edit, session, outcome, RSS MB, growth % against the end of the warm-up,
threads, open files; then the growth after warm-up and the seconds per edit.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import TINY_WORKING_PIXELS  # noqa: E402
from fake_ollama import FakeOllama  # noqa: E402
from test_soak import growth, soak  # noqa: E402
from tiny_models import save_tiny_sam, save_tiny_sdxl  # noqa: E402

from pipelines.settings import Settings  # noqa: E402
from pipelines.studio import Studio  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=40)
    parser.add_argument("--warm-up", type=int, default=5, help="edits before the baseline")
    parser.add_argument("--cancel-at", type=int, default=20, help="the edit cancelled half-way (0: none)")
    parser.add_argument("--steps", type=int, default=1, help="diffusion steps per edit")
    parser.add_argument("--edge", default="matte", help="edge mode of every edit (the test uses feather)")
    parser.add_argument("--checker", default="note", help="post-hoc nudity check (the test uses off)")
    args = parser.parse_args()

    fake = FakeOllama().start()
    fake.script("llava", text="Stylish, modern, contemporary")
    fake.script("llama2", text="misty pine forest at dawn, soft light, award winning photograph")
    folder = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    settings = Settings(sdxl_model=str(save_tiny_sdxl(folder / "sdxl")), sam_checkpoint=save_tiny_sam(folder / "sam.pth"),
                        sam_auto_download=False, checkpoint_dir=folder / "checkpoints", device="cpu",
                        working_pixels=TINY_WORKING_PIXELS, output_dir=folder / "outputs",
                        ollama_host=fake.url, ollama_timeout=10.0, safety_checker=args.checker)
    start = time.perf_counter()
    rows = soak(Studio(settings), args.edits, cancel_at=args.cancel_at or None, steps=args.steps,
                edge=args.edge, warm_up=args.warm_up)
    seconds = time.perf_counter() - start
    fake.stop()

    base = rows[args.warm_up - 1].rss
    print("| edit | session | outcome | RSS MB | growth % | threads | open files |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        change = f"{100 * (row.rss / base - 1):+.1f}" if row.edit > args.warm_up else "warm-up"
        print(f"| {row.edit} | {row.session} | {row.outcome} | {row.rss / 2**20:.0f} | {change} | "
              f"{row.threads} | {row.open_files} |")
    print(f"\ngrowth after warm-up (highest RSS over edit {args.warm_up}'s): {100 * growth(rows, args.warm_up):+.1f} %; "
          f"{seconds / len(rows):.2f} s per edit ({len(rows)} edits, {args.steps} step(s), "
          f"{int(TINY_WORKING_PIXELS**0.5)} px working side, edge {args.edge}, check {args.checker})")


if __name__ == "__main__":
    main()
