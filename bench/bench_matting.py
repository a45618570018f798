"""The matte edge: how long matting and the composite take for a 1 MP and a 12 MP photo.

A synthetic photo (a fuzzy grey subject, its outline about as long as a person's in a portrait, over a
magenta wall) is matted at the band width an edit uses (`band_radius` with the default feather 4),
then composited onto a new background; the old binary-cut composite (`images.composite` with the
feathered mask, today's `feather` edge) is timed for comparison. Wall and CPU seconds are printed:
the wall time depends on how busy the machine is, the CPU time much less.

    python bench/bench_matting.py [--sizes 1024x1024,4000x3000] [--repeats 2] [--workers 2]

The first matte of a fresh install also compiles pymatting's numba kernels (cached on disk
afterwards): a small warm-up matte runs first and is not timed. Target: under 3 s at 12 MP.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines import compositing, images, masking  # noqa: E402


def synthetic(width: int, height: int) -> tuple[Image.Image, np.ndarray]:
    """A fuzzy grey blob (radius 35 % of the short side, wobbling) on magenta, and its binary mask."""
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    yy -= height / 2
    xx -= width / 2
    short = min(width, height)
    radius = 0.35 * short * (1 + 0.08 * np.sin(7 * np.arctan2(yy, xx)))
    fade = max(2.0, short / 150)  # the soft edge scales with the photo, like real hair
    alpha = np.clip(0.5 - (np.hypot(yy, xx) - radius) / fade, 0, 1)[..., None]
    photo = alpha * 128.0 + (1 - alpha) * np.array([255.0, 0.0, 255.0], np.float32)
    return Image.fromarray(np.rint(photo).astype(np.uint8), "RGB"), alpha[..., 0] >= 0.5


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall and CPU seconds of `fn()` over `repeats` runs, and its last result."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024x1024,4000x3000", help="WxH,WxH,...")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="threads solving band blocks")
    args = parser.parse_args()

    warm_photo, warm_subject = synthetic(160, 160)
    compositing.estimate_matte(warm_photo, warm_subject, 4)  # numba compile / cache load

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, workers {args.workers}, "
          f"repeats {args.repeats} (median)\n")
    print("| photo | band radius | unknown px | step | wall s | CPU s |")
    print("| --- | ---: | ---: | --- | ---: | ---: |")
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        photo, subject = synthetic(width, height)
        background = Image.new("RGB", photo.size, (40, 150, 60))
        radius = compositing.band_radius(photo.size, feather=4)
        unknown = int((compositing.make_trimap(subject, radius) == 0.5).sum())
        label = f"{width}x{height} ({width * height / 1e6:.0f} MP)"
        rows = []
        wall, cpu, matte = timed(lambda: compositing.estimate_matte(photo, subject, radius, args.workers),
                                 args.repeats)
        rows.append(("matte: trimap, alpha, foreground", wall, cpu))
        wall, cpu, _ = timed(lambda: compositing.composite(photo, background, matte), args.repeats)
        rows.append(("matte: composite", wall, cpu))
        mask = masking.refine_mask(subject, feather=4)
        wall, cpu, _ = timed(lambda: images.composite(photo, background, mask), args.repeats)
        rows.append(("old binary cut + feather: composite", wall, cpu))
        for step, wall, cpu in rows:
            print(f"| {label} | {radius} | {unknown} | {step} | {wall:.2f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
