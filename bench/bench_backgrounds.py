"""Plain backgrounds: how long each kind takes for a 1 MP and a 12 MP photo, beyond the matting.

A synthetic photo (a fuzzy grey subject on magenta) is matted once (not timed:
bench_matting times it); then each plain kind is made and composited through `backgrounds.render`,
exactly as `run_edit` does after the mask: transparent (the RGBA cutout), a colour, a picture (a
3000x2000 JPEG-sized photo scaled to cover), the masked blur at its default radius, and white on a
16:9 canvas (the photo placed, the layer padded, the new area painted). Saving the PNG is timed on
its own: it is often the slowest part at 12 MP and does not depend on the kind.

    python bench/bench_backgrounds.py [--sizes 1024x1024,4000x3000] [--repeats 2]

Wall and CPU seconds are printed; on a busy machine the CPU seconds are the better guide.
Target: every kind under 2 s at 12 MP.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_matting import timed  # noqa: E402

from pipelines.composite import backgrounds, canvas, compositing  # noqa: E402



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

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024x1024,4000x3000", help="WxH,WxH,...")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (2000, 3000, 3), dtype=np.uint8), "RGB")
    kinds = {
        "transparent": backgrounds.Background("transparent"),
        "white": backgrounds.Background("color", color=(255, 255, 255)),
        "picture 3000x2000": backgrounds.Background("picture", picture=picture, source="picture.jpg"),
        "blur (default radius)": backgrounds.Background("blur"),
    }
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, repeats {args.repeats} (median)\n")
    print("| photo | kind | wall s | CPU s |")
    print("| --- | --- | ---: | ---: |")
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        label = f"{width}x{height} ({width * height / 1e6:.0f} MP)"
        photo, subject = synthetic(width, height)
        matte = compositing.estimate_matte(photo, subject, compositing.band_radius(photo.size, feather=4))
        whole = canvas.whole_photo(photo.size)
        out = None
        for name, background in kinds.items():
            wall, cpu, out = timed(lambda: backgrounds.render(background, photo, matte, whole), args.repeats)
            print(f"| {label} | {name} | {wall:.2f} | {cpu:.2f} |")
        frame = canvas.parse_canvas("16:9", photo.size)

        def on_canvas():
            placed = canvas.place_layer(matte, frame)
            return backgrounds.render(kinds["white"], canvas.extend_photo(photo, frame), placed, frame)

        wall, cpu, _ = timed(on_canvas, args.repeats)
        print(f"| {label} | white on a 16:9 canvas ({frame.width}x{frame.height}) | {wall:.2f} | {cpu:.2f} |")
        wall, cpu, _ = timed(lambda: out.save(io.BytesIO(), "PNG"), args.repeats)
        print(f"| {label} | saving the PNG (any kind) | {wall:.2f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
