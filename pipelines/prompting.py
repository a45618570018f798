"""Prompting: LLaVA reads the photo's mood, Llama 2 writes the SDXL prompt, and the prompt is cut to
the 77 CLIP tokens SDXL's text encoders can take.

    client = make_client(settings.ollama_host, settings.ollama_timeout)
    tokenizers = load_tokenizers(settings.sdxl_model)
    mood = describe_mood(photo, client, settings.vision_model)           # as soon as the photo arrives
    result = write_prompt("forest", mood.mood, client, tokenizers, settings.text_model)
    result.prompt, result.tokens, result.notices   # "misty pine forest at dawn, ...", 14, []

Both LLM calls use the official `ollama` client and never raise for Ollama problems: when Ollama is
not running, the model is not pulled, the reply is late, broken, empty or a refusal, the mood stays
empty or the prompt is built from `prompts/fallback.txt`, and a notice names the cause and the fix.
No call blocks for longer than the client's time-out (`make_client(host, timeout)`).

The templates live in `prompts/*.txt` (see `prompts/README.md`); the LLaVA question and the Llama 2
combine prompt are the ones from the project's seed write-up.

Importing this module is cheap: `ollama`, `httpx` and `transformers` are imported where used.
"""

from __future__ import annotations

import bisect
import io
import re
import string
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    import ollama

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"

MAX_TOKENS = 77  # CLIP's context length, BOS and EOS included: SDXL's encoders drop anything after
MOOD_IMAGE_SIDE = 672  # LLaVA 1.6 works on 336-px tiles; 2x2 tiles keep detail, fewer bytes to send
MOOD_JPEG_QUALITY = 90
MAX_MOOD_KEYWORDS = 8
DEFAULT_TIMEOUT = 60.0  # seconds, when a client carries no time-out of its own (Settings' default)


@dataclass
class MoodResult:
    """The photo's mood as LLaVA put it."""

    mood: str  # the keywords joined by ", " ("calm, warm, cozy"); "" when unavailable
    keywords: list[str]  # at most 8, de-duplicated case-insensitively, in the model's order
    source: str  # "llm" or "unavailable"
    notices: list[str] = field(default_factory=list)  # why it is unavailable, and the fix


@dataclass
class PromptResult:
    """The prompt SDXL receives, and how it came about."""

    prompt: str  # what SDXL receives
    tokens: int  # CLIP tokens incl. BOS/EOS, <= 77 (max over the tokenizers given)
    cut: str  # the text that was cut off ("" if none)
    source: str  # "llm", "template" (fallback) or "user"
    notices: list[str] = field(default_factory=list)  # fallbacks and cuts the user should know of


# ----------------------------------------------------------------------------------------------
# Templates
# ----------------------------------------------------------------------------------------------
def load_template(name: str, placeholders: tuple[str, ...] = ()) -> str:
    """Read `prompts/<name>.txt`, checking its placeholders.

    Args:
        name: file name without `.txt`, e.g. "combine".
        placeholders: the names the caller fills with `str.format`, e.g. ("mood", "keyword"). Each
            must appear as `{name}` in the file, and the file may use no others.

    Returns:
        The template text, without the file's final line break.

    Raises:
        ValueError: the file is missing, unreadable as a template, lacks a placeholder or has an
            unknown one.
    """
    path = PROMPTS_DIR / f"{name}.txt"
    try:
        text = path.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError as err:
        raise ValueError(f"template {path} does not exist") from err
    try:
        found = {field_name for _, field_name, _, _ in string.Formatter().parse(text) if field_name is not None}
    except ValueError as e:  # a lone "{" or "}"
        raise ValueError(f"template {path} is not a valid template: {e}") from e
    missing = [p for p in placeholders if p not in found]
    if missing:
        raise ValueError(f"template {path} lacks the placeholder(s) {', '.join('{' + p + '}' for p in missing)}")
    unknown = sorted(found - set(placeholders))
    if unknown:
        raise ValueError(f"template {path} has unknown placeholder(s) {', '.join('{' + p + '}' for p in unknown)}")
    return text


def default_negative_prompt() -> str:
    """The default negative prompt (from seed 001)."""
    return load_template("negative_prompt").strip()


def quality_words() -> str:
    """The positive quality words (seed 001), sent to SDXL's second encoder as `prompt_2`."""
    return load_template("quality_words").strip()


def default_sld_concept() -> str:
    """The unsafe-concept text of Safe Latent Diffusion (seed 004)."""
    return load_template("sld_concept").strip()


# ----------------------------------------------------------------------------------------------
# CLIP tokens
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
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
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(f"cannot load the SDXL tokenizer {model}/{subfolder}: {reason}") from e
        # transformers 5 builds an empty tokenizer (2 special tokens) when no files are found, e.g.
        # offline with nothing cached; counting with it would be silently wrong.
        if len(tokenizer) < 1000:
            raise RuntimeError(
                f"cannot load the SDXL tokenizer {model}/{subfolder}: no tokenizer files found "
                "(offline and not downloaded? download the model or set BACKDROP_SDXL_MODEL to a local folder)")
        tokenizers.append(tokenizer)
    return tuple(tokenizers)


def _encode(tokenizer, text: str, offsets: bool = False):
    # verbose=False: counting a long text is the point here, not a mistake worth a warning
    return tokenizer(text, add_special_tokens=True, truncation=False, verbose=False,
                     return_offsets_mapping=offsets, return_special_tokens_mask=offsets)


def count_tokens(text: str, tokenizers) -> int:
    """CLIP tokens of `text`, BOS and EOS included, without truncation.

    Args:
        text: any text.
        tokenizers: one tokenizer or several (SDXL's two); the largest count is returned, since
            every encoder must take the prompt whole.
    """
    return max(len(_encode(t, text)["input_ids"]) for t in _as_sequence(tokenizers))


def cut_to_tokens(text: str, tokenizers, max_tokens: int = MAX_TOKENS) -> tuple[str, int, str]:
    """Cut `text` at a word boundary so that every tokenizer counts at most `max_tokens`.

    The beginning is kept: LLM prompts put the subject first. Separators left dangling at the end
    of the kept part (", ; :") are dropped. A first word that alone is too long is cut inside.
    Takes about a millisecond for a 300-word reply (bench/bench_prompting.py).

    Args:
        text: the prompt.
        tokenizers: one tokenizer or several; all must take the kept text whole.
        max_tokens: BOS and EOS included (77 for SDXL).

    Returns:
        (kept, tokens of kept, cut), with `kept` a prefix of `text.strip()` and `cut` the rest,
        stripped ("" when nothing was cut).
    """
    tokenizers = _as_sequence(tokenizers)
    text = text.strip()
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2 (BOS and EOS), got {max_tokens}")
    words = [m.end() for m in re.finditer(r"\S+", text)]  # end of each word in `text`
    if all(t.is_fast for t in tokenizers):
        # Tokenizing costs time in proportion to the text, so only a window at the start is
        # tokenized: about 6 characters per token holds 77 tokens of English; grow it if it does not.
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
    else:
        # Slow tokenizers have no offsets: binary search over word prefixes (about log2(words) calls).
        total = count_tokens(text, tokenizers)
        if total <= max_tokens:
            return text, total, ""
        lo, hi = 0, len(words)  # words[:lo] fits, words[:hi + 1] does not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count_tokens(text[:words[mid - 1]], tokenizers) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        fits = lo
        past_limit = words[0] if words else 0
    # Check the result with the tokenizers themselves and step back if the estimate was off.
    while fits > 0:
        kept = text[:words[fits - 1]].rstrip(" ,;:")
        tokens = count_tokens(kept, tokenizers)
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
        if count_tokens(text[:mid], tokenizers) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo], count_tokens(text[:lo], tokenizers), text[lo:].strip()


def _as_sequence(tokenizers) -> Sequence:
    return tokenizers if isinstance(tokenizers, (tuple, list)) else (tokenizers,)


# ----------------------------------------------------------------------------------------------
# Cleaning LLM replies
# ----------------------------------------------------------------------------------------------
# A reply that opens like this is a refusal, not a prompt (Llama 2's safety tuning says these often).
_REFUSAL = re.compile(
    r"^\W*(?:i'm sorry|i am sorry|sorry\b|i apologi[sz]e|as an ai\b|as a (?:responsible|helpful) ai"
    r"|i'm just an ai|i am just an ai|i cannot|i can't|i can not|i'm not able|i am not able"
    r"|i'm unable|i am unable|i (?:must|have to) (?:respectfully )?decline|i won't|i will not"
    r"|unfortunately,? i)", re.IGNORECASE)
# Chat openers before the prompt itself ("Sure! Here's a prompt that combines ...:").
# "Great" and friends count only with punctuation after them: "Great Smoky Mountains" is a prompt.
_PREAMBLE = re.compile(
    r"^(?:(?P<word>(?:sure|certainly|of course|okay|ok|absolutely|great|alright|happy to help)(?: thing)?"
    r"(?:\s*[!,.:]+|\s*$))|(?:here(?:'s| is| are)|below is|i(?:'ve| have) (?:created|written|combined|come up)"
    r"|i(?:'d| would) (?:suggest|propose|be happy)|based on|to create)\b)", re.IGNORECASE)
# A label in front of the prompt ("**Prompt:**", "SDXL prompt (76 tokens):").
_LABEL = re.compile(r"^(?:[\w-]+\s+){0,3}prompt\b[^:\n]{0,30}:\s*", re.IGNORECASE)
# Where the explanation after the prompt starts; everything from there on is dropped.
_EXPLANATION = re.compile(
    r"(?:^|(?<=[.!?,;])\s+|\s+\(|\s+[-–—]\s+)\(?(?:"
    r"this prompt|the prompt|this combines|this description|this should|this creates|this captures"
    r"|this version|the resulting|the combination|by combining|in this prompt|note\b|n\.b\."
    r"|i hope|hope this|feel free|let me know|explanation\b|i(?:'ve| have) (?:combined|used|included|kept)"
    r"|i used|token count|word count|tokens?:|\d+ tokens\b)", re.IGNORECASE)
# Llama 2 sometimes adds a negative prompt after the positive one; SDXL gets ours separately.
_NEGATIVE = re.compile(r"^\W*negative\b", re.IGNORECASE)
_BULLET = re.compile(r"^(?:[-*•+>]|\d{1,2}[.)]|\(\d{1,2}\))\s+")
_HEADING = re.compile(r"^#{1,6}\s*")
_BOLD = re.compile(r"(\*\*|__)(.+?)\1")
_ITALIC = re.compile(r"(?<![\w*])\*(?!\s)([^*]+?)(?<!\s)\*(?![\w*])")
_DOUBLE_QUOTES = re.compile(r"[\"“”„«»]")
_WRAPPING_SINGLE_QUOTES = re.compile(r"^['‘’](.*)['‘’]$")


def clean_reply(text: str) -> str:
    """Turn an LLM's reply into a one-line prompt.

    Removes the chat preamble ("Sure, here is…", "Here's a prompt:"), labels ("Prompt:"), quotes,
    markdown (**bold**, *italics*, # headings, `code`, fences), numbering and bullets, line breaks
    (list items and lines are joined with ", ") and the explanation after the prompt ("This prompt
    combines…", "Note: …"). Refusals are not recognised here (see `write_prompt`).

    Returns:
        The prompt on one line, without trailing punctuation; "" when nothing is left.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("’", "'")
    text = re.sub(r"```[\w-]*", "\n", text)  # code fences, with or without a language tag
    lines = text.split("\n")
    # A markdown heading is a title ("# SDXL Prompt"), not part of the prompt, unless it is all there is.
    titles_only = all(_HEADING.match(line.strip()) or not line.strip() for line in lines)
    kept: list[str] = []
    for raw in lines:
        if _HEADING.match(raw.strip()) and not titles_only:
            continue
        line = _strip_markdown(raw)
        if not kept:  # preamble and labels come before the prompt only
            line = _strip_preamble(line)
        if _NEGATIVE.match(line):
            if kept:
                break
            continue
        line = _LABEL.sub("", line, count=1)
        line = _strip_markdown(line)  # "**Prompt:** *misty forest*": markdown again under the label
        explanation = _EXPLANATION.search(line)
        if explanation:
            line = line[:explanation.start()]
        line = _DOUBLE_QUOTES.sub("", line).strip()
        line = _WRAPPING_SINGLE_QUOTES.sub(r"\1", line).strip()
        if line:
            kept.append(line)
        if explanation and kept:
            break  # what follows the explanation's start is more explanation
    return _tidy(_join_lines(kept))


def _strip_markdown(line: str) -> str:
    line = line.strip()
    line = _HEADING.sub("", line)
    line = _BULLET.sub("", line)
    line = _BOLD.sub(r"\2", line)
    line = _ITALIC.sub(r"\1", line)
    return line.replace("`", "").strip()


def _strip_preamble(line: str) -> str:
    # "Sure! Here's a prompt: misty forest" -> "misty forest"; "Sure! misty forest" -> "misty forest";
    # a line that is all preamble ("Here is the prompt you asked for.") -> "".
    while match := _PREAMBLE.match(line):
        if match["word"]:  # "Sure!", "Okay,": just the word
            line = line[match.end():].strip()
        elif ":" in line:
            line = line.split(":", 1)[1].strip()
        else:
            sentence = re.match(r"^.*?[.!](?:\s+|$)", line)
            line = line[sentence.end():].strip() if sentence else ""
    return line


def _join_lines(lines: list[str]) -> str:
    # List items and lines become comma-separated phrases, the way SDXL prompts are written.
    out = ""
    for line in lines:
        if not out:
            out = line
        elif out[-1] in ",;:":
            out += " " + line
        elif out[-1] in ".!?":
            out = out[:-1] + ", " + line
        else:
            out += ", " + line
    return out


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,;])", r"\1", text)
    text = re.sub(r"([,;])(?:\s*[,;])+", r"\1", text)  # ", ," left by empty parts
    return text.strip(" ,;:.!-–—").strip()


def _has_letters(text: str) -> bool:
    return any(ch.isalpha() for ch in text)


def mood_keywords(text: str) -> list[str]:
    """The mood keywords in LLaVA's reply: at most 8, de-duplicated case-insensitively.

    Handles "Stylish, modern, contemporary", numbered or bulleted lists, a preamble ending in a
    colon ("The mood keywords of the image are: ..."), "calm and serene", and sentences after the
    list (a keyword has at most three words, so sentences are dropped).

    Returns:
        The keywords in reply order, spelled as first seen; [] when there are none.
    """
    text = text.replace("\r\n", "\n").replace("’", "'")
    phrases: list[str] = []
    for raw in text.split("\n"):
        line = _strip_markdown(raw)
        if ":" in line:  # "Mood: calm, serene" / "Here are some mood keywords:"
            line = line.rsplit(":", 1)[1]
        line = _DOUBLE_QUOTES.sub("", line)
        phrases += re.split(r"[,;/|•\n]|\.(?:\s|$)|\s+(?:and|&)\s+|!", line)
    keywords: list[str] = []
    seen: set[str] = set()
    for phrase in phrases:
        word = _strip_markdown(phrase).strip(" '\".-*_()[]")
        word = re.sub(r"^(?:and|or)\s+", "", word, flags=re.IGNORECASE)
        key = word.lower()
        if (not word or len(word.split()) > 3 or not _has_letters(word) or key in seen
                or key in _NOT_MOODS or not re.fullmatch(r"[\w' -]+", word)):
            continue
        seen.add(key)
        keywords.append(word)
        if len(keywords) == MAX_MOOD_KEYWORDS:
            break
    return keywords


# Chat words that are not moods ("Sure! Here are some keywords: calm, ...").
_NOT_MOODS = {"sure", "certainly", "of course", "okay", "ok", "yes", "absolutely", "here", "mood",
              "moods", "keywords", "mood keywords", "the mood", "words", "image", "the image", "etc"}


# ----------------------------------------------------------------------------------------------
# Ollama
# ----------------------------------------------------------------------------------------------
class OllamaUnavailable(Exception):
    """Ollama could not give a usable reply; the message names the cause and the fix."""


def make_client(host: str, timeout: float) -> "ollama.Client":
    """The official Ollama client for `host`, whose every HTTP wait is bounded by `timeout` seconds.

    Args:
        host: e.g. "http://127.0.0.1:11434" (Settings.ollama_host).
        timeout: seconds (Settings.ollama_timeout); `describe_mood` and `write_prompt` also use it
            as the deadline of a whole call, so a slowly trickling reply cannot block longer.
    """
    import ollama

    return ollama.Client(host=host, timeout=timeout)


def _client_host(client) -> str:
    # The client exposes no public accessor; the httpx client it wraps knows its base URL.
    inner = getattr(client, "_client", None)
    return str(getattr(inner, "base_url", "the configured host")).rstrip("/")


def _client_timeout(client) -> float:
    inner = getattr(client, "_client", None)
    timeout = getattr(inner, "timeout", None)
    read = getattr(timeout, "read", None)
    return float(read) if read else DEFAULT_TIMEOUT


def _run_with_deadline(fn: Callable[[threading.Event], Any], timeout: float, what: str,
                       started: float | None = None) -> Any:
    """Run `fn(cancel)` in a daemon thread and wait for it until `timeout` seconds after `started`
    (a `time.monotonic()` value; default: now).

    httpx's time-out bounds each wait for bytes, not the whole reply: a server that sends one word
    every few seconds would never trip it. So the caller stops waiting at the deadline, and `fn`
    stops reading once `cancel` is set (the thread ends at the latest when httpx times out).
    """
    box: dict[str, Any] = {}
    done = threading.Event()
    cancel = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn(cancel)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = e
        finally:
            done.set()

    started = time.monotonic() if started is None else started
    threading.Thread(target=run, name="backdrop-ollama", daemon=True).start()
    if not done.wait(max(0.0, started + timeout - time.monotonic())):
        cancel.set()
        raise OllamaUnavailable(
            f"{what} did not answer within {timeout:g} s (the model may still be loading: "
            "try again, or raise BACKDROP_OLLAMA_TIMEOUT)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _explain(error: BaseException, client, model: str, timeout: float) -> str:
    """One line naming why an Ollama call failed and what to do about it."""
    import httpx
    import ollama

    host = _client_host(client)
    if isinstance(error, OllamaUnavailable):
        return str(error)
    if isinstance(error, (ConnectionError, httpx.ConnectError)):
        return f"Ollama is not running at {host} (start it with `ollama serve`)"
    if isinstance(error, httpx.TimeoutException):
        return (f"{model} did not answer within {timeout:g} s (the model may still be loading: "
                "try again, or raise BACKDROP_OLLAMA_TIMEOUT)")
    if isinstance(error, ollama.ResponseError):
        message = str(error.error).strip().splitlines()[0] if str(error.error).strip() else "no message"
        if error.status_code == 404 or "not found" in message.lower():
            return f"the Ollama model {model} is not pulled (run `ollama pull {model}`)"
        status = f"HTTP {error.status_code}" if error.status_code > 0 else "an error"
        return f"Ollama answered {status} for {model}: {message} (see the `ollama serve` log)"
    if isinstance(error, (ValueError, httpx.DecodingError)):  # json.JSONDecodeError, pydantic errors
        return f"the reply from {host} is not Ollama's JSON (is OLLAMA_HOST an Ollama server?)"
    if isinstance(error, httpx.HTTPError):
        return f"the connection to Ollama at {host} broke: {type(error).__name__} (is `ollama serve` healthy?)"
    return f"Ollama call to {model} failed: {type(error).__name__}: {error}"


def _options(temperature: float, seed: int | None) -> dict[str, Any]:
    # Same seed and temperature give Ollama's same reply: edits are reproducible.
    options: dict[str, Any] = {"temperature": temperature}
    if seed is not None:
        options["seed"] = seed
    return options


def _chat(client, model: str, messages: list[dict], options: dict, keep_alive: str, started: float) -> str:
    """The model's whole reply, or OllamaUnavailable naming the cause and the fix; returns or raises
    by `started` (`time.monotonic()`) plus the client's time-out."""
    timeout = _client_timeout(client)

    def run(cancel: threading.Event) -> str:
        parts: list[str] = []
        # Streamed so that the reading thread can stop between chunks once the caller gave up.
        stream = client.chat(model=model, messages=messages, options=options,
                             keep_alive=keep_alive, stream=True)
        try:
            for chunk in stream:
                if cancel.is_set():
                    break
                parts.append(chunk.message.content or "")
        finally:
            stream.close()
        return "".join(parts)

    try:
        return _run_with_deadline(run, timeout, model, started)
    except Exception as e:  # noqa: BLE001 - every Ollama problem becomes a notice, never a crash
        raise OllamaUnavailable(_explain(e, client, model, timeout)) from e


def _check_reply(reply: str, model: str) -> None:
    if not reply.strip():
        raise OllamaUnavailable(f"{model} gave an empty reply (try again, or another seed)")
    if _REFUSAL.match(reply.replace("’", "'")):
        first = " ".join(reply.split()[:8]).rstrip(".,;:!…")
        raise OllamaUnavailable(f"{model} refused (\"{first}…\"; try another keyword or seed)")
    if not _has_letters(reply):
        raise OllamaUnavailable(f"{model} gave a reply without words (try again, or another seed)")


def _mood_image(image: Image.Image) -> bytes:
    """The photo as LLaVA gets it: RGB, longest side at most 672 px, JPEG-encoded once."""
    small = image.convert("RGB")  # also copies, so thumbnail() leaves the caller's image alone
    small.thumbnail((MOOD_IMAGE_SIDE, MOOD_IMAGE_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=MOOD_JPEG_QUALITY)
    return buffer.getvalue()


def describe_mood(image: Image.Image, client, model: str = "llava", *, temperature: float = 0.7,
                  seed: int | None = None, keep_alive: str = "10m") -> MoodResult:
    """Ask the vision model for the photo's mood keywords (the seed's question).

    Start it as soon as a photo arrives: the answer takes seconds, and is only needed once the
    person has typed the keyword. Never raises for Ollama problems.

    Args:
        image: the photo (any size or mode).
        client: from `make_client`; its time-out bounds the whole call.
        model: the vision model (Settings.vision_model).
        temperature, seed: sampling options passed to Ollama.
        keep_alive: how long Ollama keeps the model loaded afterwards.

    Returns:
        A MoodResult; with source "unavailable", an empty mood and a notice when Ollama failed.
    """
    started = time.monotonic()  # the deadline covers shrinking and encoding the photo too
    question = load_template("mood_question")
    message = {"role": "user", "content": question, "images": [_mood_image(image)]}
    try:
        reply = _chat(client, model, [message], _options(temperature, seed), keep_alive, started)
        _check_reply(reply, model)
        keywords = mood_keywords(reply)
        if not keywords:
            raise OllamaUnavailable(f"{model} named no mood keywords (try again, or another seed)")
    except OllamaUnavailable as e:
        return MoodResult("", [], "unavailable", [f"No mood keywords: {e}; type the mood yourself if you like."])
    return MoodResult(", ".join(keywords), keywords, "llm", [])


def write_prompt(keyword: str, mood: str, client, tokenizers, model: str = "llama2", *,
                 temperature: float = 0.7, seed: int | None = None, keep_alive: str = "10m") -> PromptResult:
    """Have the text model combine keyword and mood into an SDXL prompt (the seed's combine prompt).

    The reply is cleaned (`clean_reply`) and cut at a word boundary to 77 CLIP tokens. When Ollama
    fails (not running, model not pulled, time-out, HTTP error, empty, garbage or a refusal) the
    prompt comes from `prompts/fallback.txt` instead, with a notice. Never raises for Ollama problems.

    Args:
        keyword: the background the user typed, any language; may be empty when `mood` is not.
        mood: mood keywords ("calm, warm, cozy"), may be empty.
        client: from `make_client`; its time-out bounds the whole call.
        tokenizers: SDXL's (tokenizer, tokenizer_2), from `load_tokenizers`.
        model: the text model (Settings.text_model).
        temperature, seed: sampling options passed to Ollama.
        keep_alive: how long Ollama keeps the model loaded afterwards.

    Raises:
        ValueError: both keyword and mood are empty, or a template is broken.
    """
    started = time.monotonic()
    keyword, mood = _check_inputs(keyword, mood)
    template = load_template("combine", ("mood", "keyword"))
    message = {"role": "user", "content": template.format(mood=mood, keyword=keyword)}
    try:
        reply = _chat(client, model, [message], _options(temperature, seed), keep_alive, started)
        _check_reply(reply, model)
        prompt = clean_reply(reply)
        if not _has_letters(prompt):
            raise OllamaUnavailable(f"{model} gave a reply with no prompt in it (try again, or another seed)")
    except OllamaUnavailable as e:
        return fallback_prompt(keyword, mood, tokenizers, [f"Prompt written from the template: {e}."])
    kept, tokens, cut = cut_to_tokens(prompt, tokenizers)
    return PromptResult(kept, tokens, cut, "llm", [])


def _check_inputs(keyword: str, mood: str) -> tuple[str, str]:
    keyword, mood = " ".join(keyword.split()), " ".join(mood.split())
    if not keyword and not mood:
        raise ValueError("type a background keyword")
    return keyword, mood


def fallback_prompt(keyword: str, mood: str, tokenizers, notices: list[str] | None = None) -> PromptResult:
    """The prompt from `prompts/fallback.txt` when no LLM can write one.

    Args:
        keyword: the user's background keyword; may be empty when `mood` is not.
        mood: mood keywords, may be empty.
        tokenizers: SDXL's tokenizers, for the 77-token cut.
        notices: notices to carry (why the LLM was not used); a copy is extended.

    Raises:
        ValueError: both keyword and mood are empty, or the template is broken.
    """
    keyword, mood = _check_inputs(keyword, mood)
    notices = list(notices or [])
    template = load_template("fallback", ("keyword", "mood"))
    prompt = _tidy(template.format(keyword=keyword, mood=mood))
    if any(ch.isalpha() and not unicodedata.name(ch, "").startswith("LATIN") for ch in keyword):
        # Only the LLM translates; SDXL's CLIP encoders were trained on (mostly) English captions.
        notices.append(f"The keyword \"{_shorten(keyword, 40)}\" went to SDXL untranslated: "
                       "SDXL understands English best, so an English keyword gives a closer result.")
    kept, tokens, cut = cut_to_tokens(prompt, tokenizers)
    if cut:
        notices.append(_cut_notice(cut))
    return PromptResult(kept, tokens, cut, "template", notices)


def user_prompt(text: str, tokenizers) -> PromptResult:
    """A prompt the user typed: lines joined with ", ", cut to 77 CLIP tokens with a notice if cut.

    Raises:
        ValueError: the text is empty.
    """
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
    prompt = _tidy(_join_lines(lines)) if lines else ""
    if not prompt:
        raise ValueError("the prompt is empty")
    kept, tokens, cut = cut_to_tokens(prompt, tokenizers)
    return PromptResult(kept, tokens, cut, "user", [_cut_notice(cut)] if cut else [])


def _cut_notice(cut: str) -> str:
    return f"The prompt was cut to {MAX_TOKENS} CLIP tokens, the most SDXL reads; dropped: \"{_shorten(cut, 80)}\"."


def _shorten(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a space when there is one, with "…" when cut."""
    if len(text) <= limit:
        return text
    head = text[:limit - 1]
    return (head.rsplit(" ", 1)[0] if " " in head else head).rstrip(" ,;:") + "…"


def ollama_status(client, models: tuple[str, ...]) -> str:
    """One line for the page about Ollama and the models the app needs.

    Returns:
        "Ollama: llava, llama2 ready", "Ollama not running at http://...: start it with
        `ollama serve`", "Ollama: llama2 not pulled (ollama pull llama2)", or another one-line cause.
    """
    import httpx

    try:
        missing = missing_models(client, models)
    except OllamaUnavailable as e:  # a status line, never a crash
        if isinstance(e.__cause__, (ConnectionError, httpx.ConnectError)):
            return f"Ollama not running at {_client_host(client)}: start it with `ollama serve`"
        return f"Ollama: {e}"
    if missing:
        fixes = "; ".join(f"ollama pull {m}" for m in missing)
        return f"Ollama: {', '.join(missing)} not pulled ({fixes})"
    return f"Ollama: {', '.join(models)} ready"


def missing_models(client, models: tuple[str, ...]) -> list[str]:
    """The models of `models` that Ollama has not pulled, in order.

    Raises:
        OllamaUnavailable: Ollama could not be asked (one line naming the cause and the fix).
    """
    timeout = _client_timeout(client)
    try:
        listed = _run_with_deadline(lambda cancel: client.list(), timeout, "Ollama")
    except Exception as e:  # noqa: BLE001 - every failure becomes one line
        raise OllamaUnavailable(_explain(e, client, "Ollama", timeout)) from e
    names = {m.model for m in listed.models if m.model}
    return [m for m in models if not _is_installed(m, names)]


def _is_installed(model: str, names: set[str]) -> bool:
    # "llava" means "llava:latest"; "llava:13b" must match exactly.
    return model in names or (":" not in model and f"{model}:latest" in names)


def pull_model(client, model: str, on_progress: Callable[[str, int, int], None] | None = None) -> None:
    """Download `model` into Ollama (`ollama pull`), reporting progress.

    Args:
        client: from `make_client`. Its time-out bounds each wait for progress, not the download.
        model: e.g. "llava".
        on_progress: called with (status, completed bytes, total bytes) for every progress line
            Ollama sends, e.g. ("pulling 170370233dd5", 2097152, 4108916384); 0, 0 when unknown.

    Raises:
        RuntimeError: one line: Ollama is not running, the model does not exist, or the pull broke.
    """
    import httpx
    import ollama

    status = ""
    try:
        for progress in client.pull(model, stream=True):
            status = progress.status or ""
            if on_progress is not None:
                on_progress(status, int(progress.completed or 0), int(progress.total or 0))
    except (ConnectionError, httpx.ConnectError) as err:
        raise RuntimeError(f"cannot pull {model}: Ollama is not running at {_client_host(client)} "
                           "(start it with `ollama serve`)") from err
    except ollama.ResponseError as e:
        raise RuntimeError(f"cannot pull {model}: {str(e.error).strip()}") from e
    except httpx.TimeoutException as err:
        raise RuntimeError(f"cannot pull {model}: no progress for {_client_timeout(client):g} s") from err
    except (httpx.HTTPError, ValueError) as e:
        raise RuntimeError(f"cannot pull {model}: {type(e).__name__}: {e}") from e
    if status != "success":
        raise RuntimeError(f"cannot pull {model}: Ollama stopped at \"{status or 'nothing'}\"")


def loaded_models(client) -> dict[str, int]:
    """The models Ollama holds in memory now (`ollama ps`), each with the bytes it holds on a GPU.

    Returns:
        {"llava:latest": 4_800_000_000, ...}; 0 for a model Ollama runs on the CPU.

    Raises:
        OllamaUnavailable: Ollama could not be asked (one line naming the cause and the fix).
    """
    timeout = _client_timeout(client)
    try:
        listed = _run_with_deadline(lambda cancel: client.ps(), timeout, "Ollama")
    except Exception as e:  # noqa: BLE001 - every failure becomes one line
        raise OllamaUnavailable(_explain(e, client, "Ollama", timeout)) from e
    return {m.model or m.name or "?": int(m.size_vram or 0) for m in listed.models}


def unload_models(client, models: Sequence[str]) -> None:
    """Ask Ollama to unload `models` now: one generate request without a prompt and with
    `keep_alive: 0` each, which is how Ollama's API says "free this model's memory".

    Raises:
        OllamaUnavailable: one line naming the model, the cause and the fix.
    """
    timeout = _client_timeout(client)
    for model in models:
        try:
            _run_with_deadline(lambda cancel, m=model: client.generate(model=m, keep_alive=0), timeout, model)
        except Exception as e:  # noqa: BLE001 - every failure becomes one line
            raise OllamaUnavailable(_explain(e, client, model, timeout)) from e
