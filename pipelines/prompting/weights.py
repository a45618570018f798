"""Prompt weights in the seed's syntax: `realistic photography+++, realism++`.

A run of `+` right after a word, and not followed by a letter or digit, weights the text back to the
previous comma (or the previous weight mark): each `+` multiplies the weight by 1.1, as in compel,
so `realistic photography+++` is compel's `(realistic photography)+++`, weight 1.331. Any other `+`
(`2+2`, `+ light`) is text. The marks never reach a tokenizer: `parse_weights` splits a text into
`Fragment`s whose texts, joined, are exactly what the tokenizers read (`plain_text`), and
`blending.encode_prompt` hands the fragments and their weights to compel, which scales the text
encoder's output per token.

Why not compel's own parser: compel's `word+` weights one word (the seed weights whole phrases),
and its parser also drops quotes and parentheses from ordinary text, which would change what the
tokenizers read for every LLM prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

WEIGHT_STEP = 1.1  # compel's: every "+" multiplies the weight by 1.1

# A weight mark: a "+" run after a word's last character, not followed by a letter or digit.
_MARK = re.compile(r"(?<=[^\s,+])\++(?![\w+])")


@dataclass(frozen=True)
class Fragment:
    """A piece of a prompt and its weight."""

    text: str  # exactly as the tokenizers read it
    plus: int = 0  # the number of "+" after it; weight = 1.1 ** plus

    @property
    def weight(self) -> float:
        return WEIGHT_STEP ** self.plus


def parse_weights(text: str) -> list[Fragment]:
    """Split `text` into fragments: weighted phrases and the unweighted text around them.

    Args:
        text: a prompt, e.g. "misty forest, realistic photography+++, realism++".

    Returns:
        Fragments in order whose texts joined give `plain_text(text)`, e.g. [("misty forest, ", 0),
        ("realistic photography", 3), (", ", 0), ("realism", 2)]; one fragment (or none for "")
        when there is no mark. Empty texts are left out.
    """
    if "+" not in text:  # the common case, without the regex's per-character look-behind
        return [Fragment(text)] if text else []
    fragments: list[Fragment] = []
    start = 0  # where the text not yet in a fragment begins
    for mark in _MARK.finditer(text):
        # the weighted phrase starts after the last comma before the mark (or where the last mark ended)
        comma = text.rfind(",", start, mark.start())
        phrase_start = start if comma < 0 else comma + 1
        while phrase_start < mark.start() and text[phrase_start].isspace():
            phrase_start += 1
        if text[start:phrase_start]:
            fragments.append(Fragment(text[start:phrase_start]))
        fragments.append(Fragment(text[phrase_start:mark.start()], len(mark.group())))
        start = mark.end()
    if text[start:]:
        fragments.append(Fragment(text[start:]))
    return fragments


def plain_text(text: str) -> str:
    """`text` without its weight marks: what the tokenizers read."""
    return "".join(f.text for f in parse_weights(text))


def format_weights(fragments: list[Fragment]) -> str:
    """Fragments back to the seed's syntax (the inverse of `parse_weights`)."""
    return "".join(f.text + "+" * f.plus for f in fragments)


def has_weights(text: str) -> bool:
    """Whether `text` holds a weight mark."""
    return "+" in text and _MARK.search(text) is not None  # the "in" test is the fast common case


def keep_plain_prefix(text: str, length: int) -> str:
    """The start of `text` whose plain text is `plain_text(text)[:length]`, weight marks kept."""
    kept: list[Fragment] = []
    for fragment in parse_weights(text):
        if length <= 0:
            break
        kept.append(Fragment(fragment.text[:length], fragment.plus))
        length -= len(fragment.text)
    return format_weights(kept)
