"""The 77-token cut: how long `cut_to_tokens` takes on realistic and worst-case prompts.

The cut runs on every prompt (LLM replies, template prompts, typed prompts), with SDXL's two fast
CLIP tokenizers, and must take under 5 ms: one tokenizer pass per tokenizer with character offsets,
a bisect per word boundary, and one check of the kept text. The second encoder's text (the scene,
then the quality words that fit: `build_prompt_2`) is timed too.

    python bench/bench_prompting.py [--model SDXL_FOLDER_OR_ID] [--repeats 200]

Without --model the real CLIP vocabulary is built offline from open-clip-torch, as the tests do.
Prints a Markdown table (milliseconds, median and 95th percentile over the repeats). The budget is
checked on the median: on a busy machine the 95th percentile also holds the time the process waited
for a CPU (a scheduler slice is a few ms), which is why the load average is printed with it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.prompting import (  # noqa: E402
    build_prompt_2,
    clean_reply,
    count_tokens,
    cut_to_tokens,
    quality_words,
)

BUDGET_MS = 5.0

PHRASES = ("a breathtaking misty pine forest at dawn, soft golden light filtering through tall ancient "
           "cedars, moss covered stones along a quiet river, gentle fog drifting between the trunks, "
           "a stylish modern glass cabin with warm interior glow, contemporary minimalist architecture, "
           "cinematic atmosphere, serene and calm mood, highly detailed, sharp focus, award winning "
           "photograph,").split(" ")


def words(n: int) -> str:
    return " ".join(PHRASES[i % len(PHRASES)] for i in range(n))


CASES = {
    "reply that fits (14 tokens)": "misty pine forest at dawn, soft light, award winning photograph",
    "reply of 60 words": words(60),
    "reply of 300 words": words(300),
    "reply of 1000 words": words(1000),
    "Korean + emoji, 60 words": " ".join(["비 오는 밤거리 🌧️ 네온 불빛"] * 12),
    "one 1500-character word": "x" * 1500,
}
MESSY_REPLY = ('Sure! Here\'s a prompt that combines \'Stylish, modern, contemporary\' and \'forest\':\n\n"'
               + words(300) + '"\n\nThis prompt combines the mood with the keyword. I hope this helps!')


def timings(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up: first-call caches of the tokenizer
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="SDXL folder or hub id (default: CLIP vocabulary from open-clip)")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    if args.model:
        from pipelines.prompting import load_tokenizers

        tokenizers = load_tokenizers(args.model)
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_models import build_clip_tokenizer

        tokenizers = (build_clip_tokenizer(), build_clip_tokenizer(pad_token="!"))

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"CPU: {platform.machine()} x{os.cpu_count()}, load average {load}, Python "
          f"{platform.python_version()}, {args.repeats} repeats, both SDXL tokenizers\n")
    print("| prompt | tokens | kept | cut median | cut p95 | prompt_2 median | prompt_2 p95 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    quality = quality_words()
    worst = worst_p95 = 0.0
    for name, text in CASES.items():
        kept, tokens, _ = cut_to_tokens(text, tokenizers)
        fast_med, fast_p95 = timings(lambda: cut_to_tokens(text, tokenizers), args.repeats)
        two_med, two_p95 = timings(lambda: build_prompt_2(kept, quality, tokenizers[1]), args.repeats)
        worst, worst_p95 = max(worst, fast_med), max(worst_p95, fast_p95)
        print(f"| {name} | {count_tokens(text, tokenizers)} | {tokens} | {fast_med:.2f} | {fast_p95:.2f} "
              f"| {two_med:.2f} | {two_p95:.2f} |")

    clean_med, clean_p95 = timings(lambda: clean_reply(MESSY_REPLY), args.repeats)
    both_med, both_p95 = timings(lambda: cut_to_tokens(clean_reply(MESSY_REPLY), tokenizers), args.repeats)
    print(f"\nclean_reply on a messy 300-word reply: median {clean_med:.2f} ms, p95 {clean_p95:.2f} ms; "
          f"clean + cut: median {both_med:.2f} ms, p95 {both_p95:.2f} ms")
    verdict = "within" if worst < BUDGET_MS else "OVER"
    print(f"the cut: worst median {worst:.2f} ms ({verdict} the {BUDGET_MS:g} ms budget), "
          f"worst p95 {worst_p95:.2f} ms")


if __name__ == "__main__":
    main()
