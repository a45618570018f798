"""Cleaning LLM replies: Llama 2's chatty answer becomes a one-line prompt, LLaVA's answer a list of
mood keywords.

Owns `clean_reply` (preamble, labels, quotes, markdown, lists, explanations) and `mood_keywords`,
and the small text helpers the prompt builders share (`tidy`, `join_lines`, `has_letters`).
Pure string work: no model, no network.
"""

from __future__ import annotations

import re

MAX_MOOD_KEYWORDS = 8

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
    return tidy(join_lines(kept))


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


def join_lines(lines: list[str]) -> str:
    """Lines joined into one prompt: "a\nb." -> "a, b", the way SDXL prompts are written."""
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


def tidy(text: str) -> str:
    """One line, no space before a comma, no empty parts, no punctuation at either end."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,;])", r"\1", text)
    text = re.sub(r"([,;])(?:\s*[,;])+", r"\1", text)  # ", ," left by empty parts
    return text.strip(" ,;:.!-–—").strip()


def has_letters(text: str) -> bool:
    """Whether `text` holds a letter of any script (a prompt needs at least one word)."""
    return any(ch.isalpha() for ch in text)


def is_refusal(reply: str) -> bool:
    """Whether a reply opens like a refusal ("I'm sorry, but I cannot ...") rather than a prompt."""
    return _REFUSAL.match(reply.replace("’", "'")) is not None


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
        if (not word or len(word.split()) > 3 or not has_letters(word) or key in seen
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


