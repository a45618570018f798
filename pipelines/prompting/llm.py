"""The two LLM calls and their fallbacks: LLaVA names the photo's mood, Llama 2 writes the SDXL prompt.

    mood = describe_mood(photo, client, "llava")                     # as soon as the photo arrives
    result = write_prompt("forest", mood.mood, client, tokenizers, "llama2")
    result.prompt, result.tokens, result.notices   # "misty pine forest at dawn, ...", 14, []

Both calls never raise for Ollama problems: when Ollama is not running, the model is not pulled, the
reply is late, broken, empty or a refusal, the mood stays empty or the prompt is built from
`prompts/fallback.txt`, and a notice names the cause and the fix. A prompt the user typed goes
through `user_prompt`. Every prompt is cut to 77 CLIP tokens (`tokens.cut_to_tokens`).
"""

from __future__ import annotations

import io
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from pipelines.prompting.cleaning import clean_reply, has_letters, is_refusal, join_lines, mood_keywords, tidy
from pipelines.prompting.templates import load_template
from pipelines.prompting.tokens import MAX_TOKENS, build_prompt_2, cut_to_tokens
from pipelines.prompting.transport import OllamaClient, OllamaUnavailable

MOOD_IMAGE_SIDE = 672  # LLaVA 1.6 works on 336-px tiles; 2x2 tiles keep detail, fewer bytes to send
MOOD_JPEG_QUALITY = 90


@dataclass
class MoodResult:
    """The photo's mood as LLaVA put it."""

    mood: str  # the keywords joined by ", " ("calm, warm, cozy"); "" when unavailable
    keywords: list[str]  # at most 8, de-duplicated case-insensitively, in the model's order
    source: str  # "llm" or "unavailable"
    notices: list[str] = field(default_factory=list)  # why it is unavailable, and the fix


@dataclass
class PromptResult:
    """A prompt an SDXL text encoder receives, and how it came about."""

    prompt: str  # what SDXL receives (weight marks such as "realism++" included)
    tokens: int  # CLIP tokens the tokenizers read, BOS/EOS included, <= 77 (max over the tokenizers given)
    cut: str  # the text that was cut off ("" if none)
    source: str  # "llm", "template" (fallback), "user", or "scene+quality" (the second encoder's)
    notices: list[str] = field(default_factory=list)  # fallbacks and cuts the user should know of


def describe_mood(image: Image.Image, client: OllamaClient, model: str = "llava", *, temperature: float = 0.7,
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
        reply = client.chat(model, [message], _options(temperature, seed), keep_alive, started)
        _check_reply(reply, model)
        keywords = mood_keywords(reply)
        if not keywords:
            raise OllamaUnavailable(f"{model} named no mood keywords (try again, or another seed)")
    except OllamaUnavailable as e:
        return MoodResult("", [], "unavailable", [f"No mood keywords: {e}; type the mood yourself if you like."])
    return MoodResult(", ".join(keywords), keywords, "llm", [])


def write_prompt(keyword: str, mood: str, client: OllamaClient, tokenizers, model: str = "llama2", *,
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
        reply = client.chat(model, [message], _options(temperature, seed), keep_alive, started)
        _check_reply(reply, model)
        prompt = clean_reply(reply)
        if not has_letters(prompt):
            raise OllamaUnavailable(f"{model} gave a reply with no prompt in it (try again, or another seed)")
    except OllamaUnavailable as e:
        return fallback_prompt(keyword, mood, tokenizers, [f"Prompt written from the template: {e}."])
    kept, tokens, cut = cut_to_tokens(prompt, tokenizers)
    return PromptResult(kept, tokens, cut, "llm", [])


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
    prompt = tidy(template.format(keyword=keyword, mood=mood))
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
    prompt = tidy(join_lines(lines)) if lines else ""
    if not prompt:
        raise ValueError("the prompt is empty")
    kept, tokens, cut = cut_to_tokens(prompt, tokenizers)
    return PromptResult(kept, tokens, cut, "user", [_cut_notice(cut)] if cut else [])


def _check_inputs(keyword: str, mood: str) -> tuple[str, str]:
    keyword, mood = " ".join(keyword.split()), " ".join(mood.split())
    if not keyword and not mood:
        raise ValueError("type a background keyword")
    return keyword, mood


def _check_reply(reply: str, model: str) -> None:
    if not reply.strip():
        raise OllamaUnavailable(f"{model} gave an empty reply (try again, or another seed)")
    if is_refusal(reply):
        first = " ".join(reply.split()[:8]).rstrip(".,;:!…")
        raise OllamaUnavailable(f"{model} refused (\"{first}…\"; try another keyword or seed)")
    if not has_letters(reply):
        raise OllamaUnavailable(f"{model} gave a reply without words (try again, or another seed)")


def _options(temperature: float, seed: int | None) -> dict[str, Any]:
    # Same seed and temperature give Ollama's same reply: edits are reproducible.
    options: dict[str, Any] = {"temperature": temperature}
    if seed is not None:
        options["seed"] = seed
    return options


def _mood_image(image: Image.Image) -> bytes:
    """The photo as LLaVA gets it: RGB, longest side at most 672 px, JPEG-encoded once."""
    small = image.convert("RGB")  # also copies, so thumbnail() leaves the caller's image alone
    small.thumbnail((MOOD_IMAGE_SIDE, MOOD_IMAGE_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=MOOD_JPEG_QUALITY)
    return buffer.getvalue()


def _cut_notice(cut: str) -> str:
    return f"The prompt was cut to {MAX_TOKENS} CLIP tokens, the most SDXL reads; dropped: \"{_shorten(cut, 80)}\"."


def _shorten(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a space when there is one, with "…" when cut."""
    if len(text) <= limit:
        return text
    head = text[:limit - 1]
    return (head.rsplit(" ", 1)[0] if " " in head else head).rstrip(" ,;:") + "…"


def second_prompt(prompt: str, quality: str, tokenizers) -> PromptResult:
    """What SDXL's second encoder (OpenCLIP bigG) reads: the scene, then the quality words that fit.

    Seed 001 builds `prompt_2` as the keywords plus the quality words; without the scene, the big
    encoder (1280 of the 2048 context channels and the whole pooled vector) would never read it.

    Args:
        prompt: the scene prompt the first encoder reads (a `PromptResult.prompt`).
        quality: the quality words ("realistic photography+++, realism++"); "" for none.
        tokenizers: SDXL's (tokenizer, tokenizer_2); the second one counts.

    Returns:
        A PromptResult with source "scene+quality": `prompt` the text with its weight marks,
        `tokens` as tokenizer_2 reads it (<= 77), `cut` the quality words that did not fit.
    """
    tokenizer_2 = tokenizers[-1] if isinstance(tokenizers, (tuple, list)) else tokenizers
    text, tokens, dropped = build_prompt_2(prompt, quality, tokenizer_2)
    return PromptResult(text, tokens, dropped, "scene+quality", [])
