"""Click-to-mask latency: the first click (image embedding + decode) and later clicks (decode only).

SAM vit_b with random weights (the architecture, not the weights, sets the cost) on a synthetic
1024x768 photo, through `MaskPredictor.predict` exactly as the page calls it: each later click adds
a point and feeds the previous best candidate's logits back as `mask_input`.

    python bench/bench_masking.py [--model-type vit_b] [--clicks 10] [--device cpu] [--threads N]

Prints a Markdown table (milliseconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.masking import MaskPredictor  # noqa: E402
from pipelines.sam_models import SAM_VARIANTS  # noqa: E402
from pipelines.types import ClickPoint  # noqa: E402


def synthetic_photo(width: int = 1024, height: int = 768, seed: int = 0) -> Image.Image:
    """A textured background with a bright disk: a photo-sized input with some structure."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    pixels[(xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (height / 4) ** 2] = (230, 200, 40)
    return Image.fromarray(pixels, "RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
    parser.add_argument("--clicks", type=int, default=10, help="later clicks to time")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", default="0,1",
                        help="torch CPU thread counts to time later clicks with (0: torch's default)")
    args = parser.parse_args()

    import torch

    default_threads = torch.get_num_threads()
    thread_counts = [int(n) or default_threads for n in args.threads.split(",")]
    torch.manual_seed(0)
    sam = SAM_VARIANTS[args.model_type]().to(args.device).eval()
    predictor = MaskPredictor(sam, cache_size=2, variant=args.model_type)
    photo = synthetic_photo()
    rng = np.random.default_rng(1)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    # Warm-up on another photo: the first call of any torch model pays one-time allocation costs.
    predictor.predict(synthetic_photo(seed=2), [ClickPoint(512, 384, 1)])

    points = [ClickPoint(512, 384, 1)]
    sync()
    start = time.perf_counter()
    result = predictor.predict(photo, points)
    sync()
    first = (time.perf_counter() - start) * 1000

    later: dict[int, list[float]] = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        times = later.setdefault(threads, [])
        for i in range(args.clicks):
            label = int(i % 3 != 2)  # mostly positive, every third click negative
            points.append(ClickPoint(int(rng.integers(0, 1024)), int(rng.integers(0, 768)), label))
            start = time.perf_counter()
            result = predictor.predict(photo, points, mask_input=result.next_mask_input())
            sync()
            times.append((time.perf_counter() - start) * 1000)
    assert predictor.embed_count == 2, "later clicks must not recompute the embedding"

    print(f"SAM {args.model_type} (random weights), 1024x768 photo, {args.device}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print()
    print("| step | torch threads | ms |")
    print("| --- | ---: | ---: |")
    print(f"| first click (embedding + decode) | {default_threads} | {first:.0f} |")
    for threads, times in later.items():
        print(f"| later click (decode), median of {len(times)} | {threads} | {statistics.median(times):.0f} |")
        print(f"| later click, min / max | {threads} | {min(times):.0f} / {max(times):.0f} |")


if __name__ == "__main__":
    main()
