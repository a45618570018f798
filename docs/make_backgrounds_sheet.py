"""Draw docs/backgrounds.png: one synthetic photo through every plain background kind and a canvas.

    python docs/make_backgrounds_sheet.py

The photo is made in code (a fuzzy, striped ball with thin strands on a saturated magenta wall with a few
lamps, so a fringe of the old background would show), matted with the `matte` edge and rendered by the same
`backgrounds.render` an edit uses. `generate` needs SDXL weights, so it is not on the sheet.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.composite import backgrounds, canvas, compositing  # noqa: E402

TILE = (200, 150)


def synthetic_photo() -> tuple[Image.Image, np.ndarray]:
    """The photo and its subject (bool): an orange ball with soft, hairy edges on a magenta wall."""
    width, height = TILE
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    dy, dx = yy - height * 0.55, xx - width * 0.5
    distance, angle = np.hypot(dy, dx), np.arctan2(dy, dx)
    radius = 48 + 3 * np.sin(9 * angle)
    alpha = np.clip(0.5 - (distance - radius) / 4, 0, 1)
    for k in range(24):  # strands: thin, 60 % opaque, sticking out of the ball
        theta = k * 2 * np.pi / 24 + 0.1
        across = np.abs(np.sin(angle - theta)) * distance
        strand = (across <= 0.7) & (np.cos(angle - theta) > 0) & (distance > radius) & (distance < radius + 14)
        alpha[strand] = np.maximum(alpha[strand], 0.6)
    ball = np.stack([230 - 0.4 * dy, 120 + 40 * np.sin(dx / 9), 40 + 0.3 * dx], -1)  # lit from above
    wall = np.stack([220 + 0 * xx, 30 + 0.2 * yy, 200 + 0.2 * xx], -1)  # magenta, a little gradient
    lights = (np.hypot((xx % 40) - 20, (yy % 36) - 18) < 6) & ((xx // 40 + yy // 36) % 2 == 0)
    wall[lights] = (255, 240, 120)  # a few lamps on the wall, for the blur to soften
    photo = alpha[..., None] * ball + (1 - alpha[..., None]) * wall
    return Image.fromarray(np.clip(np.rint(photo), 0, 255).astype(np.uint8), "RGB"), alpha >= 0.5


def synthetic_picture() -> Image.Image:
    """A 'brand backdrop' of another shape: a sky gradient, a sun and a green hill (400x160)."""
    yy, xx = np.mgrid[:160, :400].astype(np.float32)
    sky = np.stack([120 + 0.6 * yy, 170 + 0.4 * yy, 250 + 0 * yy], -1)
    sky[np.hypot(xx - 300, yy - 45) < 22] = (255, 220, 90)
    sky[yy > 120 - 25 * np.sin(xx / 70)] = (70, 150, 70)
    return Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8), "RGB")


def checkerboard(size: tuple[int, int], cell: int = 8) -> Image.Image:
    yy, xx = np.mgrid[:size[1], :size[0]]
    grey = np.where((yy // cell + xx // cell) % 2 == 0, 205, 245).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGBA")


def main() -> None:
    photo, subject = synthetic_photo()
    matte = compositing.edge_layer(photo, subject, "matte", feather=4)
    whole = canvas.whole_photo(photo.size)
    tiles = [("photo", photo)]
    kinds = [("transparent", backgrounds.Background("transparent")),
             ("white", backgrounds.Background("color", color=(255, 255, 255))),
             ("#1e90ff", backgrounds.Background("color", color=(30, 144, 255))),
             ("picture (400x160)", backgrounds.Background("picture", picture=synthetic_picture(), source="x")),
             ("blur:6", backgrounds.Background("blur", radius=6.0))]
    for label, background in kinds:
        out = backgrounds.render(background, photo, matte, whole)
        if out.mode == "RGBA":  # shown over a checkerboard, as image editors show transparency
            out = Image.alpha_composite(checkerboard(out.size), out).convert("RGB")
        tiles.append((label, out))
    frame = canvas.parse_canvas("16:9", photo.size, "left")
    wide = backgrounds.render(kinds[4][1], canvas.extend_photo(photo, frame), canvas.place_layer(matte, frame), frame)
    tiles.append(("blur:6, canvas 16:9, place left", wide))

    pad, caption = 6, 14
    columns = 4
    rows = -(-len(tiles) // columns)
    cell_w = max(t.width for _, t in tiles[:-1])
    sheet_w = pad + columns * (cell_w + pad)
    sheet = Image.new("RGB", (sheet_w, pad + rows * (TILE[1] + caption + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    x, y = pad, pad
    for index, (label, tile) in enumerate(tiles):
        if index and index % columns == 0:
            x, y = pad, y + TILE[1] + caption + pad
        sheet.paste(tile, (x, y + caption))
        draw.text((x, y), label, fill="black")
        x += max(tile.width, cell_w) + pad
    out = ROOT / "docs" / "backgrounds.png"
    sheet.quantize(colors=192, dither=Image.Dither.NONE).save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
