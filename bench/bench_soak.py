"""Memory over many edits in one process (tiny models, CPU): the table behind issue 13.5.

Drives `pipelines.entry.workbench.Workbench` as the page does (upload, click, mood, Generate) through
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
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

# conftest puts the repository on sys.path and keeps the hubs offline.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import TINY_WORKING_PIXELS, make_tiny_settings, start_fake_ollama  # noqa: E402
from test_soak import growth, soak  # noqa: E402
from tiny_models import save_tiny_sam, save_tiny_sdxl  # noqa: E402

from pipelines.entry.workbench import Workbench  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=40)
    parser.add_argument("--warm-up", type=int, default=5, help="edits before the baseline")
    parser.add_argument("--cancel-at", type=int, default=20, help="the edit cancelled half-way (0: none)")
    parser.add_argument("--steps", type=int, default=1, help="diffusion steps per edit")
    parser.add_argument("--edge", default="matte", help="edge mode of every edit (the test uses feather)")
    parser.add_argument("--checker", default="note", help="post-hoc nudity check (the test uses off)")
    args = parser.parse_args()

    fake = start_fake_ollama()
    folder = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    settings = make_tiny_settings(folder, save_tiny_sdxl(folder / "sdxl"), save_tiny_sam(folder / "sam.pth"), fake.url)
    settings = dataclasses.replace(settings, safety_checker=args.checker)
    start = time.perf_counter()
    rows = soak(Workbench(settings), args.edits, cancel_at=args.cancel_at or None, steps=args.steps,
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
