"""Prompt texts: the templates and default texts under `prompts/`, read at run time.

Owns `load_template` (which checks each file's `{placeholders}`) and the default texts of the seeds:
the negative prompt and the quality words (seed 001) and the SLD concept (seed 004).
"""

from __future__ import annotations

import string
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"


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
