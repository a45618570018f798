"""CLIP tokens: SDXL's tokenizers, counting, the 77-token cut, and what each text encoder reads.

SDXL's two text encoders read at most 77 tokens each (BOS and EOS included) and drop the rest, so
every prompt is cut here, at a word boundary, by the tokenizers SDXL ships (fast CLIP tokenizers,
whose character offsets make the cut one pass). Counting and cutting apply to what the tokenizers
read: weight marks (`realism++`, see `weights`) are kept in the text but never counted.

`build_prompt_2` makes the second encoder's text (OpenCLIP bigG): the scene, then the quality words
(seed 001: `prompt_2 += positive_prompt`), the scene first and whole, quality words dropped first.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from pipelines.errors import one_line
from pipelines.prompting.weights import has_weights, keep_plain_prefix, plain_text

MAX_TOKENS = 77  # CLIP's context length, BOS and EOS included: SDXL's encoders drop anything after

# One load at a time: concurrent first calls (four "Write prompt" clicks, parallel edits) would each
# load them, and race in transformers' lazy imports ("cannot import name 'CLIPTokenizer'").
_load_lock = threading.Lock()


def load_tokenizers(model: str) -> tuple:
    """SDXL's two tokenizers, from a local diffusers folder or a Hugging Face model id.

    Args:
        model: a folder holding `tokenizer/` and `tokenizer_2/`, or a hub id such as
            "stabilityai/stable-diffusion-xl-base-1.0" (read from the local cache when offline).

    Returns:
        (tokenizer, tokenizer_2), cached per `model`.

    Raises:
        RuntimeError: one line saying where the tokenizers were looked for and what to do.
    """
    with _load_lock:
        return _load_tokenizers(model)


def sdxl_tokenizers(settings) -> tuple:
    """The tokenizers of the SDXL model `settings` name, from its local copy (only they are fetched
    when nothing is cached): offline, an uncached model is one line at once, not minutes of retries."""
    from pipelines import downloads

    return load_tokenizers(str(downloads.sdxl_folder(settings, tokenizers_only=True)))


@lru_cache(maxsize=4)
def _load_tokenizers(model: str) -> tuple:
    from transformers import CLIPTokenizer

    local = Path(model).expanduser()
    if not local.is_dir() and model.startswith(("/", ".", "~")):
        raise RuntimeError(f"cannot load the SDXL tokenizers: no folder {model}")
    source = str(local) if local.is_dir() else model
    tokenizers = []
    for subfolder in ("tokenizer", "tokenizer_2"):
        try:
            tokenizer = CLIPTokenizer.from_pretrained(source, subfolder=subfolder)
        except Exception as e:  # OSError offline, ValueError for broken files: one line for the page
            raise RuntimeError(f"cannot load the SDXL tokenizer {model}/{subfolder}: {one_line(e)}") from e
        # transformers 5 builds an empty tokenizer (2 special tokens) when no files are found, e.g.
        # offline with nothing cached; counting with it would be silently wrong.
        if len(tokenizer) < 1000:
            raise RuntimeError(
                f"cannot load the SDXL tokenizer {model}/{subfolder}: no tokenizer files found "
                "(offline and not downloaded? download the model or set BACKDROP_SDXL_MODEL to a local folder)")
        tokenizers.append(tokenizer)
    return tuple(tokenizers)


def count_tokens(text: str, tokenizers) -> int:
    """CLIP tokens the tokenizers read for `text` (weight marks left out), BOS and EOS included,
    without truncation.

    Args:
        text: any text.
        tokenizers: one tokenizer or several (SDXL's two); the largest count is returned, since
            every encoder must take the prompt whole.
    """
    return _count(plain_text(text), _as_sequence(tokenizers))


def cut_to_tokens(text: str, tokenizers, max_tokens: int = MAX_TOKENS) -> tuple[str, int, str]:
    """Cut `text` at a word boundary so that every tokenizer reads at most `max_tokens`.

    The beginning is kept: LLM prompts put the subject first. Separators left dangling at the end
    of the kept part (", ; :") are dropped. A first word that alone is too long is cut inside.
    Weight marks are kept on the kept text and not counted. Takes about a millisecond for a
    300-word reply (bench/bench_prompting.py).

    Args:
        text: the prompt.
        tokenizers: one fast tokenizer or several; all must take the kept text whole.
        max_tokens: BOS and EOS included (77 for SDXL).

    Returns:
        (kept, tokens of kept, cut), with `kept` a prefix of `text.strip()` (weight marks kept) and
        `cut` the rest as the tokenizers would read it, stripped ("" when nothing was cut).

    Raises:
        ValueError: `max_tokens` is below 2, or a tokenizer is not a fast one.
    """
    tokenizers = _as_sequence(tokenizers)
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2 (BOS and EOS), got {max_tokens}")
    slow = [type(t).__name__ for t in tokenizers if not getattr(t, "is_fast", False)]
    if slow:
        raise ValueError(f"the token cut needs fast tokenizers (with character offsets), got {', '.join(slow)}")
    text = text.strip()
    if not has_weights(text):
        return _cut_plain(text, tokenizers, max_tokens)
    kept, tokens, cut = _cut_plain(plain_text(text), tokenizers, max_tokens)
    return keep_plain_prefix(text, len(kept)), tokens, cut


def build_prompt_2(prompt: str, quality: str, tokenizer_2, max_tokens: int = MAX_TOKENS) -> tuple[str, int, str]:
    """The second encoder's text: the scene, then as many quality words as fit (seed 001).

    The scene comes first and is kept whole (cut only if it alone is over `max_tokens`); the
    quality words follow phrase by phrase (comma-separated, each with its weight mark) in their
    order, and those that no longer fit are dropped, never the scene.

    Args:
        prompt: the scene prompt, as the first encoder reads it (already within 77 tokens).
        quality: the quality words, e.g. "realistic photography+++, realism++"; "" for none.
        tokenizer_2: SDXL's second tokenizer (fast).
        max_tokens: BOS and EOS included.

    Returns:
        (prompt_2, its tokens as tokenizer_2 reads it, the quality words dropped, ", "-joined).
    """
    scene, tokens, _ = cut_to_tokens(prompt, tokenizer_2, max_tokens)
    phrases = [p.strip() for p in quality.split(",") if p.strip()]

    def joined(k: int) -> str:
        return ", ".join(([scene] if scene else []) + phrases[:k])

    # the count grows with the number of phrases: find the most that fit
    lo, hi = 0, len(phrases)  # joined(lo) fits, joined(hi + 1) does not
    lo_tokens = None  # count_tokens(joined(lo)), once the search has counted it
    while lo < hi:
        mid = (lo + hi + 1) // 2
        mid_tokens = count_tokens(joined(mid), tokenizer_2)
        if mid_tokens <= max_tokens:
            lo, lo_tokens = mid, mid_tokens
        else:
            hi = mid - 1
    prompt_2 = joined(lo)
    if lo_tokens is None:  # no quality phrase fits (or there are none): the scene alone
        lo_tokens = count_tokens(prompt_2, tokenizer_2)
    return prompt_2, lo_tokens, ", ".join(phrases[lo:])


def _encode(tokenizer, text: str, offsets: bool = False):
    # verbose=False: counting a long text is the point here, not a mistake worth a warning
    return tokenizer(text, add_special_tokens=True, truncation=False, verbose=False,
                     return_offsets_mapping=offsets, return_special_tokens_mask=offsets)


def _count(text: str, tokenizers: Sequence) -> int:
    return max(len(_encode(t, text)["input_ids"]) for t in tokenizers)


def _cut_plain(text: str, tokenizers: Sequence, max_tokens: int) -> tuple[str, int, str]:
    """`cut_to_tokens` on a text without weight marks (stripped).

    Tokenizing costs time in proportion to the text, so only a window at the start is tokenized:
    about 6 characters per token holds 77 tokens of English; the window grows if it does not.
    """
    words = [m.end() for m in re.finditer(r"\S+", text)]  # end of each word in `text`
    window = 6 * max_tokens
    while True:
        if window >= len(text):
            n, end = len(words), len(text)
        else:
            n = bisect.bisect_right(words, window)
            # no whole word in the window: a long run without spaces, of which a prefix will do
            end = words[n - 1] if n else window
        counts, total, past_limit = _word_counts(text[:end], words[:n], tokenizers, max_tokens)
        if end == len(text) and total <= max_tokens:
            return text, total, ""
        if total > max_tokens or end == len(text):
            break
        window *= 4
    fits = bisect.bisect_right(counts, max_tokens)  # counts grow with the number of words
    # Check the result with the tokenizers themselves and step back if the estimate was off.
    while fits > 0:
        kept = text[:words[fits - 1]].rstrip(" ,;:")
        tokens = _count(kept, tokenizers)
        if kept and tokens <= max_tokens:
            return kept, tokens, text[words[fits - 1]:].strip()
        fits -= 1
    return _cut_inside_word(text, past_limit, tokenizers, max_tokens)


def _word_counts(text: str, words: list[int], tokenizers, max_tokens: int) -> tuple[list[int], int, int]:
    """Tokens of each prefix `text[:words[k]]` (max over tokenizers), of the whole `text`, and
    where the first token past `max_tokens` ends (`len(text)` if none is).

    One pass per tokenizer with character offsets: the prefix ending at word k holds the special
    tokens plus every token that starts before the word's end. This is exact because CLIP splits on
    whitespace before BPE, so a prefix ending at a word boundary is tokenized like the start of
    the whole text; `cut_to_tokens` checks its result anyway.
    """
    counts = [0] * len(words)
    total, past_limit = 0, len(text)
    for tokenizer in tokenizers:
        enc = _encode(tokenizer, text, offsets=True)
        total = max(total, len(enc["input_ids"]))
        specials = sum(enc["special_tokens_mask"])
        spans = [span for span, special in zip(enc["offset_mapping"], enc["special_tokens_mask"]) if not special]
        starts = [start for start, _ in spans]
        for k, end in enumerate(words):
            counts[k] = max(counts[k], specials + bisect.bisect_left(starts, end))
        if len(spans) > max_tokens - specials:
            past_limit = min(past_limit, spans[max_tokens - specials][1])
    return counts, total, past_limit


def _cut_inside_word(text: str, hi: int, tokenizers, max_tokens: int) -> tuple[str, int, str]:
    """Cut a first word that alone has too many tokens (a long run without spaces) by characters,
    searching `text[:hi]`: up to where the first token past the limit ends, so that every call
    tokenizes a short text (BPE on one long word is slow)."""
    lo = 0  # text[:lo] fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _count(text[:mid], tokenizers) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo], _count(text[:lo], tokenizers), text[lo:].strip()


def _as_sequence(tokenizers) -> Sequence:
    return tokenizers if isinstance(tokenizers, (tuple, list)) else (tokenizers,)
