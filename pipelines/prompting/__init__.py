"""Prompting: LLaVA reads the photo's mood, Llama 2 writes the SDXL prompt, and each of SDXL's two
text encoders gets its text within the 77 CLIP tokens it can take.

    client = make_client(settings.ollama_host, settings.ollama_timeout)
    tokenizers = load_tokenizers(settings.sdxl_model)
    mood = describe_mood(photo, client, settings.vision_model)           # as soon as the photo arrives
    result = write_prompt("forest", mood.mood, client, tokenizers, settings.text_model)
    result.prompt, result.tokens, result.notices   # "misty pine forest at dawn, ...", 14, []
    second = second_prompt(result.prompt, quality_words(), tokenizers)
    second.prompt   # "misty pine forest at dawn, ..., realistic photography+++, realism++, ..."

The package, one concern per module:

- `llm`: the two LLM calls and their template fallbacks (`describe_mood`, `write_prompt`,
  `fallback_prompt`, `user_prompt`, `second_prompt`).
- `tokens`: SDXL's tokenizers (`sdxl_tokenizers`), `count_tokens`, the 77-token cut, the second encoder's text.
- `weights`: the seed's `phrase+++` weight marks, parsed so they never reach a tokenizer.
- `cleaning`: LLM replies to a one-line prompt, or to mood keywords.
- `transport`: `OllamaClient`, our client over the official `ollama` one (host, time-out, errors).
- `templates`: the texts under `prompts/`.

Importing this package is cheap: `ollama`, `httpx` and `transformers` are imported where used.
"""

from pipelines.prompting.cleaning import clean_reply, mood_keywords
from pipelines.prompting.llm import (
    MoodResult,
    PromptResult,
    describe_mood,
    fallback_prompt,
    second_prompt,
    user_prompt,
    write_prompt,
)
from pipelines.prompting.templates import (
    PROMPTS_DIR,
    default_negative_prompt,
    default_sld_concept,
    load_template,
    quality_words,
)
from pipelines.prompting.tokens import (
    MAX_TOKENS,
    build_prompt_2,
    count_tokens,
    cut_to_tokens,
    load_tokenizers,
    sdxl_tokenizers,
)
from pipelines.prompting.transport import (
    OllamaClient,
    OllamaUnavailable,
    make_client,
    ollama_status,
)
from pipelines.prompting.weights import Fragment, parse_weights, plain_text

__all__ = [
    "MAX_TOKENS", "PROMPTS_DIR", "Fragment", "MoodResult", "OllamaClient", "OllamaUnavailable", "PromptResult",
    "build_prompt_2", "clean_reply", "count_tokens", "cut_to_tokens", "default_negative_prompt",
    "default_sld_concept", "describe_mood", "fallback_prompt", "load_template", "load_tokenizers", "make_client",
    "mood_keywords", "ollama_status", "parse_weights", "plain_text", "quality_words", "sdxl_tokenizers", "second_prompt", "user_prompt", "write_prompt",
]
