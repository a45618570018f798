"""Batch throughput: rows per minute in this process and on 1 and 2 Ray workers (tiny models, CPU).

The tiny SDXL and SAM of the tests (built in code, saved to a temporary folder, loaded back by the
app's loaders), a synthetic photo per row with its prompt given (no Ollama), through
`batch.run_batch` exactly as `python -m pipelines batch` runs it. Each Ray worker holds one CPU and
one torch thread. Worker start-up (process, imports, models, and a first row on each worker, which
warms torch as this process's warm-up run does) is timed
apart from the rows: it is paid once per worker, not per row.

    python bench/bench_batch.py [--rows 8] [--steps 4] [--side 256] [--cpus 2] [--edge matte]

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# conftest puts the repository on sys.path and keeps the hubs offline.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import make_photo  # noqa: E402
from tiny_models import save_tiny_sam, save_tiny_sdxl  # noqa: E402

from pipelines.entry import batch, cluster  # noqa: E402
from pipelines.settings import Settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--side", type=int, default=256, help="the working size's side, pixels")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--edge", default="matte", help="every row's edge (matte, feather or hard)")
    args = parser.parse_args()

    import ray
    import torch

    folder = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    settings = Settings(sdxl_model=str(save_tiny_sdxl(folder / "sdxl")), sam_checkpoint=save_tiny_sam(folder / "sam.pth"),
                        sam_auto_download=False, checkpoint_dir=folder / "checkpoints", device="cpu",
                        working_pixels=args.side * args.side, output_dir=folder / "outputs")
    for n in range(args.rows):
        make_photo(320, 240, seed=n).save(folder / f"photo{n}.png")
    rows = [{"photo": f"photo{n}.png", "points": "160,120", "seed": str(n)} for n in range(args.rows)]
    defaults = {"prompt": "a misty forest", "steps": args.steps, "edge": args.edge}

    def run(name: str, workers: int | None, count: int = args.rows) -> float:
        out = folder / name
        tasks = batch.make_tasks(rows[:count], defaults, folder, out, settings)
        start = time.perf_counter()
        records = batch.run_batch(tasks, settings, out, workers=workers, progress=False)
        seconds = time.perf_counter() - start
        assert all(r["status"] == "done" for r in records), [r["error"] for r in records]
        return seconds

    table = []
    torch.set_num_threads(1)  # as a Ray CPU worker: the rows per minute compare like for like
    cluster.EditWorker().ready(settings)
    run("warm-up", None)
    table.append(("this process, 1 thread", "-", run("serial", None)))

    start = time.perf_counter()
    cluster.connect(num_cpus=args.cpus, num_gpus=0, include_dashboard=False, object_store_memory=100 * 1024**2)
    cluster_seconds = time.perf_counter() - start
    for workers in (1, 2):
        start = time.perf_counter()
        actors = cluster.get_workers(workers)
        ray.get([actor.ready.remote(settings) for actor in actors])
        # A first row on every worker (the queue hands each worker one of the first `workers` rows).
        run(f"warm-up-ray{workers}", workers, count=workers)
        startup = time.perf_counter() - start
        table.append((f"Ray, {workers} worker{'s' * (workers > 1)}", f"{startup:.1f}", run(f"ray{workers}", workers)))
    cluster.stop_workers()
    ray.shutdown()

    load = os.getloadavg()[0]
    print(f"{args.rows} rows of 320x240 photos, working size {args.side}x{args.side}, {args.steps} steps, "
          f"{args.edge} edge; "
          f"local cluster start-up {cluster_seconds:.1f} s; load average {load:.1f} on {os.cpu_count()} cores\n")
    print("| run | worker start-up (s, new workers) | rows (s) | rows per minute | vs 1 worker |")
    print("| --- | ---: | ---: | ---: | ---: |")
    one = next(seconds for name, _, seconds in table if name.startswith("Ray, 1"))
    for name, startup, seconds in table:
        print(f"| {name} | {startup} | {seconds:.1f} | {60 * args.rows / seconds:.1f} | {one / seconds:.2f}x |")


if __name__ == "__main__":
    main()
