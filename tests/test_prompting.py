"""Prompting: templates, the LLaVA mood and Llama 2 prompt over real HTTP (a fake Ollama on loopback,
driven by the official client), reply cleaning, the 77-token cut with the real CLIP vocabulary, and
every way Ollama can fail ending in a prompt and a notice."""

from __future__ import annotations

import base64
import io
import re
import time

import numpy as np
import pytest
from app_server import free_port as closed_port
from fake_ollama import Script
from PIL import Image

from pipelines import prompting
from pipelines.prompting import (
    Fragment,
    MoodResult,
    PromptResult,
    clean_reply,
    count_tokens,
    cut_to_tokens,
    default_negative_prompt,
    default_sld_concept,
    describe_mood,
    fallback_prompt,
    load_template,
    load_tokenizers,
    make_client,
    mood_keywords,
    ollama_status,
    parse_weights,
    plain_text,
    quality_words,
    second_prompt,
    user_prompt,
    write_prompt,
)

# The seed's texts, verbatim (seed 002: LLaVA question and Llama 2 prompt; seed 001: negative and
# quality words; seed 004: the SLD concept).
SEED_QUESTION = "Please express the mood keyword of the image,words"
SEED_COMBINE_1 = ("Combine '{mood}' and '{keyword}' to create a new atmospheric background prompt that "
                  "best suits SDXL. The maximum number of tokens that can be used in the generated "
                  "sentence is 77. ")
SEED_COMBINE_2 = ("Describe like this example. example : breathtaking origami, close up portrait of a "
                  "mature irish man with flushed skin swimming in the cold sea at dawn, soft light, eerie "
                  "serene photograph by annie leibowitz, 2 0 1 9, thomas kinkade, bouguereau, award "
                  "winning, paper art pleated paper folded origami art pleats cut and fold“")
OUR_COMBINE_3 = "Write the prompt in English whatever the language of '{keyword}', and reply with the prompt only."
SEED_NEGATIVE = ("CG, wallpaper, animation, anime, doll, disney, cartoons, cropped, misshapen, blurry, "
                 "unfocused, desaturated, abstract, surreal, pixelated, noisy, pop art, no faces, no objects, "
                 "no landscape, mutilated, disfigured, ugly, deformed, clear visibility of faces, no abstract "
                 "faces, shadows on faces")
SEED_QUALITY = ("realistic photography+++, realism++, realistic++, super-detailed++, true-to-life++, "
                "best quality++, balanced++, well-defined++, clear++, well-defined facial features++, "
                "detailed faces++")
SEED_SLD = ("hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, bodily "
            "fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, "
            "child abuse, brutality, cruelty")

MOOD = "Stylish, modern, contemporary"  # LLaVA's answer in the seed write-up
FOREST_PROMPT = "misty pine forest at dawn, soft light, award winning photograph"  # the fixture's llama2 reply
FALLBACK_FOREST = ("forest, Stylish, modern, contemporary, atmospheric background, cinematic lighting, "
                   "highly detailed photograph")


def combine_text(mood: str, keyword: str) -> str:
    return "\n".join([SEED_COMBINE_1, SEED_COMBINE_2, OUR_COMBINE_3]).format(mood=mood, keyword=keyword)


@pytest.fixture
def client(fake_ollama):
    return make_client(fake_ollama.url, 5.0)


@pytest.fixture
def photo() -> Image.Image:
    """A 2000x1000 RGBA photo: a horizontal gradient, so the downscaled JPEG can be checked."""
    ramp = Image.linear_gradient("L").rotate(90).resize((2000, 1000))
    return Image.merge("RGBA", (ramp, ramp, Image.new("L", (2000, 1000), 90), Image.new("L", (2000, 1000), 255)))


# ----------------------------------------------------------------------------------------------
# Templates
# ----------------------------------------------------------------------------------------------
def test_templates_are_the_seed_texts():
    assert load_template("mood_question") == SEED_QUESTION
    combine = load_template("combine", ("mood", "keyword"))
    assert combine.split("\n") == [SEED_COMBINE_1, SEED_COMBINE_2, OUR_COMBINE_3]
    assert default_negative_prompt() == SEED_NEGATIVE
    assert quality_words() == SEED_QUALITY
    assert default_sld_concept() == SEED_SLD
    assert load_template("fallback", ("keyword", "mood")) == (
        "{keyword}, {mood}, atmospheric background, cinematic lighting, highly detailed photograph")


def test_template_lacking_a_placeholder_raises(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"mood_question.txt lacks the placeholder\(s\) \{mood\}$"):
        load_template("mood_question", ("mood",))
    with pytest.raises(ValueError, match=r"combine.txt has unknown placeholder\(s\) \{keyword\}$"):
        load_template("combine", ("mood",))
    with pytest.raises(ValueError, match=r"nothing.txt does not exist$"):
        load_template("nothing")
    # A broken combine template is found when it is loaded, before anything is sent to Ollama.
    (tmp_path / "combine.txt").write_text("Combine '{mood}' into an SDXL prompt.\n", encoding="utf-8")
    (tmp_path / "lone.txt").write_text("a { b", encoding="utf-8")
    monkeypatch.setattr(prompting.templates, "PROMPTS_DIR", tmp_path)
    with pytest.raises(ValueError, match=r"lacks the placeholder\(s\) \{keyword\}$"):
        write_prompt("forest", MOOD, None, None)
    with pytest.raises(ValueError, match="is not a valid template"):
        load_template("lone")


# ----------------------------------------------------------------------------------------------
# Request bodies
# ----------------------------------------------------------------------------------------------
def test_mood_request_body_and_result(fake_ollama, client, photo):
    result = describe_mood(photo, client, "llava", temperature=0.3, seed=7, keep_alive="5m")

    assert result == MoodResult(MOOD, ["Stylish", "modern", "contemporary"], "llm", [])
    [body] = fake_ollama.bodies("/api/chat")
    [message] = body.pop("messages")
    assert body == {"model": "llava", "stream": True, "options": {"temperature": 0.3, "seed": 7},
                    "keep_alive": "5m", "tools": []}
    [image_b64] = message.pop("images")
    assert message == {"role": "user", "content": SEED_QUESTION}
    sent = Image.open(io.BytesIO(base64.b64decode(image_b64, validate=True)))
    assert (sent.format, sent.mode, sent.size) == ("JPEG", "RGB", (672, 336))  # longest side 672
    # it is the photo: the gradient runs left (dark) to right (bright)
    assert sent.getpixel((10, 168))[0] < 20 and sent.getpixel((661, 168))[0] > 235


def test_prompt_request_body_and_result(fake_ollama, client, clip_tokenizers):
    result = write_prompt("forest", MOOD, client, clip_tokenizers, "llama2", temperature=0.7, seed=42,
                          keep_alive="10m")

    assert result == PromptResult(FOREST_PROMPT, 14, "", "llm", [])
    [body] = fake_ollama.bodies("/api/chat")
    assert body == {"model": "llama2", "stream": True, "options": {"temperature": 0.7, "seed": 42},
                    "keep_alive": "10m", "tools": [],
                    "messages": [{"role": "user", "content": combine_text(MOOD, "forest")}]}
    assert body["messages"][0]["content"].startswith(
        "Combine 'Stylish, modern, contemporary' and 'forest' to create a new atmospheric background")


def test_no_seed_sends_only_the_temperature(fake_ollama, client, clip_tokenizers, photo):
    describe_mood(photo, client, temperature=0.9)
    write_prompt("forest", MOOD, client, clip_tokenizers, temperature=0.2, keep_alive="1h")
    mood_body, prompt_body = fake_ollama.bodies("/api/chat")
    assert mood_body["options"] == {"temperature": 0.9} and mood_body["keep_alive"] == "10m"
    assert prompt_body["options"] == {"temperature": 0.2} and prompt_body["keep_alive"] == "1h"


def test_korean_and_emoji_keyword_reach_the_model(fake_ollama, client, clip_tokenizers):
    keyword = "비 오는 밤거리 🌧️"
    fake_ollama.script("llama2", text="Here's a prompt: rainy night street, neon reflections on wet asphalt")
    result = write_prompt(keyword, "calm, warm", client, clip_tokenizers, seed=1)

    assert result == PromptResult("rainy night street, neon reflections on wet asphalt", 11, "", "llm", [])
    [body] = fake_ollama.bodies("/api/chat")
    assert body["messages"][0]["content"] == combine_text("calm, warm", keyword)
    assert body["messages"][0]["content"].count(keyword) == 2  # the request and the "in English" line


def test_empty_keyword_needs_a_mood(fake_ollama, client, clip_tokenizers):
    with pytest.raises(ValueError, match="^type a background keyword$"):
        write_prompt("  ", "", client, clip_tokenizers)
    with pytest.raises(ValueError, match="^type a background keyword$"):
        fallback_prompt("", " ", clip_tokenizers)
    assert fake_ollama.bodies("/api/chat") == []

    result = write_prompt("", "calm, warm", client, clip_tokenizers)
    assert result.prompt == FOREST_PROMPT
    assert fake_ollama.bodies("/api/chat")[0]["messages"][0]["content"] == combine_text("calm, warm", "")
    assert fallback_prompt("", "calm, warm", clip_tokenizers) == PromptResult(
        "calm, warm, atmospheric background, cinematic lighting, highly detailed photograph", 15, "",
        "template", [])


# ----------------------------------------------------------------------------------------------
# Cleaning: messy replies as Llama 2 writes them, sent through the fake server, and the exact prompt
# ----------------------------------------------------------------------------------------------
MESSY_REPLIES = [
    ('Sure, here is a prompt for SDXL:\n\n"Misty pine forest at dawn, stylish modern cabin, soft light, '
     'award winning photograph"',
     "Misty pine forest at dawn, stylish modern cabin, soft light, award winning photograph"),
    ("Here's a prompt:\n**Prompt:** misty pine forest at dawn, soft light, contemporary architecture",
     "misty pine forest at dawn, soft light, contemporary architecture"),
    ('"misty pine forest at dawn, soft light, award winning photograph"', FOREST_PROMPT),
    ("# SDXL Prompt\nmisty pine forest at dawn, `soft light`, **award winning** photograph", FOREST_PROMPT),
    ("1. misty pine forest at dawn\n2. soft golden light\n3. modern glass cabin\n4. award winning photograph",
     "misty pine forest at dawn, soft golden light, modern glass cabin, award winning photograph"),
    ("- misty pine forest\n- soft light\n* stylish *modern* cabin",
     "misty pine forest, soft light, stylish modern cabin"),
    (FOREST_PROMPT + "\n\nThis prompt combines the stylish, modern and contemporary mood with the forest keyword.",
     FOREST_PROMPT),
    (FOREST_PROMPT + ". Note: the prompt is under 77 tokens.", FOREST_PROMPT),
    ("Sure! Here's a prompt that combines 'Stylish, modern, contemporary' and 'forest':\n\n"
     '"Stylish modern forest retreat, contemporary glass cabin among tall pines, soft morning light, award '
     'winning photograph"\n\nI hope this helps! Let me know if you need anything else.',
     "Stylish modern forest retreat, contemporary glass cabin among tall pines, soft morning light, award "
     "winning photograph"),
    ("Certainly! Here is the prompt you requested.\n\nmisty pine forest at dawn,\nsoft light,\naward winning photograph",
     FOREST_PROMPT),
    ("```\nmisty pine forest at dawn, soft light\n```", "misty pine forest at dawn, soft light"),
    ("“rainy night street in Seoul, neon reflections on wet asphalt, moody cinematic photograph”",
     "rainy night street in Seoul, neon reflections on wet asphalt, moody cinematic photograph"),
    ("Prompt (76 tokens): misty pine forest at dawn, soft light (Note: I kept it short)",
     "misty pine forest at dawn, soft light"),
    ("breathtaking pine forest, close up of a modern glass cabin at dawn, soft light, eerie serene photograph "
     "by annie leibowitz, 2 0 1 9, award winning“",
     "breathtaking pine forest, close up of a modern glass cabin at dawn, soft light, eerie serene photograph "
     "by annie leibowitz, 2 0 1 9, award winning"),
    ("Misty pine forest at dawn.\nSoft light filtering through the trees.\n\nExplanation: the misty forest "
     "sets a contemporary tone.",
     "Misty pine forest at dawn, Soft light filtering through the trees"),
    ("Okay! 'misty pine forest at dawn, soft light' — This prompt captures the stylish mood.",
     "misty pine forest at dawn, soft light"),
    ("**Positive prompt:** misty pine forest at dawn, soft light\n**Negative prompt:** blurry, cartoon, lowres",
     "misty pine forest at dawn, soft light"),
    ("Sure, I'd be happy to help!\n\nPrompt: misty pine forest at dawn, soft light, award winning photograph",
     FOREST_PROMPT),
    ("OK, misty pine forest at dawn, soft light, award winning photograph.", FOREST_PROMPT),
    ("Great Smoky Mountains at dawn, misty pine forest, soft light",  # "Great" without "!" is no preamble
     "Great Smoky Mountains at dawn, misty pine forest, soft light"),
]


@pytest.mark.parametrize("reply, expected", MESSY_REPLIES, ids=[f"reply{i}" for i in range(len(MESSY_REPLIES))])
def test_messy_replies_are_cleaned(fake_ollama, client, clip_tokenizers, reply, expected):
    fake_ollama.script("llama2", text=reply)
    result = write_prompt("forest", MOOD, client, clip_tokenizers, seed=3)
    assert (result.prompt, result.source, result.cut, result.notices) == (expected, "llm", "", [])
    assert result.tokens == count_tokens(expected, clip_tokenizers) <= 77
    assert clean_reply(reply) == expected


LLAMA2_STYLE_REPLY = (
    "  Sure! Here is a prompt that combines 'Stylish, modern, contemporary' and 'forest' to create a new "
    "atmospheric background prompt that best suits SDXL:\n\n\"Explore the sleek and sophisticated world of "
    "modern forest design, where lush greenery meets cutting-edge architecture. Step into a stylish retreat "
    "nestled among towering trees, where contemporary comfort blends seamlessly with nature's beauty. Breathe "
    "in the fresh air and let the soothing sounds of the forest envelop you in this chic and sophisticated "
    "sanctuary. Soft morning mist drifts between the pines, and golden light catches the glass walls of the "
    "cabin.\"\n\nThis prompt combines the keywords \"Stylish, modern, contemporary\" and \"forest\" to "
    "create a unique and atmospheric background prompt that is well-suited for SDXL. The prompt is 76 tokens "
    "long, which is within the maximum limit of 77 tokens.")


def test_a_wordy_llama2_reply_is_cleaned_then_cut(fake_ollama, client, clip_tokenizers):
    fake_ollama.script("llama2", text=LLAMA2_STYLE_REPLY)
    result = write_prompt("forest", MOOD, client, clip_tokenizers)
    assert result == PromptResult(
        "Explore the sleek and sophisticated world of modern forest design, where lush greenery meets "
        "cutting-edge architecture. Step into a stylish retreat nestled among towering trees, where "
        "contemporary comfort blends seamlessly with nature's beauty. Breathe in the fresh air and let the "
        "soothing sounds of the forest envelop you in this chic and sophisticated sanctuary. Soft morning "
        "mist drifts between the pines, and golden", 77,
        "light catches the glass walls of the cabin", "llm", [])
    assert count_tokens(result.prompt + " light", clip_tokenizers) == 78


def test_mood_keywords_from_messy_llava_replies():
    assert mood_keywords("Stylish, modern, contemporary") == ["Stylish", "modern", "contemporary"]
    assert mood_keywords("Sure! Here are some mood keywords for the image:\n\n1. Calm\n2. Serene\n"
                         "3. Peaceful\n4. calm\n5. SERENE") == ["Calm", "Serene", "Peaceful"]
    assert mood_keywords("The mood keywords of the image are: cozy, warm, and inviting.") == [
        "cozy", "warm", "inviting"]
    assert mood_keywords("Mood: calm; serene / dreamy") == ["calm", "serene", "dreamy"]
    assert mood_keywords("Calm, serene. The image shows a woman standing in a wide open field.") == [
        "Calm", "serene"]
    assert mood_keywords("**Moody**, *dark*, mysterious!") == ["Moody", "dark", "mysterious"]
    assert mood_keywords("차분한, 따뜻한, 아늑한") == ["차분한", "따뜻한", "아늑한"]
    assert mood_keywords("Calm, serene, peaceful, natural, relaxing, tranquil, soft, warm, gentle, quiet") == [
        "Calm", "serene", "peaceful", "natural", "relaxing", "tranquil", "soft", "warm"]  # at most 8
    assert mood_keywords("The image depicts a woman in a bold green turtleneck sweater.") == []


def test_mood_keywords_over_http(fake_ollama, client, photo):
    fake_ollama.script("llava", text="- Cozy\n- warm\n- Inviting\n- cozy\n\nThe photo shows a living room.")
    result = describe_mood(photo, client)
    assert result == MoodResult("Cozy, warm, Inviting", ["Cozy", "warm", "Inviting"], "llm", [])


# ----------------------------------------------------------------------------------------------
# The 77-token cut (real CLIP vocabulary, both SDXL tokenizers)
# ----------------------------------------------------------------------------------------------
PHRASES = ("a breathtaking misty pine forest at dawn, soft golden light filtering through tall ancient "
           "cedars, moss covered stones along a quiet river, gentle fog drifting between the trunks, "
           "a stylish modern glass cabin with warm interior glow, contemporary minimalist architecture, "
           "cinematic atmosphere, serene and calm mood, highly detailed, sharp focus, award winning "
           "photograph, ").split(" ")


def long_reply(words: int = 300) -> str:
    text = " ".join(PHRASES[i % (len(PHRASES) - 1)] for i in range(words))
    assert len(text.split()) == words
    return text


def test_a_300_word_reply_is_cut_at_a_word_boundary(fake_ollama, client, clip_tokenizers):
    reply = long_reply()
    fake_ollama.script("llama2", text=reply)
    result = write_prompt("forest", MOOD, client, clip_tokenizers)

    tokenizer, tokenizer_2 = clip_tokenizers
    assert [len(t(result.prompt)["input_ids"]) for t in clip_tokenizers] == [77, 77]
    assert result.tokens == 77 and result.source == "llm" and result.notices == []
    assert reply.startswith(result.prompt)  # the beginning is kept
    assert len(result.prompt.split()) == 62
    assert result.prompt.endswith("award winning photograph, a breathtaking misty pine forest at dawn, soft golden")
    assert reply[len(result.prompt):].startswith(" light filtering ")  # cut between words
    assert reply == result.prompt + " " + result.cut
    assert count_tokens(result.prompt + " light", clip_tokenizers) == 78  # one more word would not fit
    assert len(tokenizer_2(result.prompt, padding="max_length", max_length=77)["input_ids"]) == 77


@pytest.mark.parametrize("text, expected", [
    ("", ("", 2, "")),
    ("a photo of a cat", ("a photo of a cat", 7, "")),
    ("  a photo of a cat,  ", ("a photo of a cat,", 8, "")),  # short text is only stripped
])
def test_cut_leaves_short_text(clip_tokenizers, text, expected):
    assert cut_to_tokens(text, clip_tokenizers) == expected


def test_cut_exact_boundaries(clip_tokenizers):
    words75 = " ".join(["forest"] * 75)  # "forest" is one token: 75 + BOS + EOS = 77
    assert cut_to_tokens(words75, clip_tokenizers) == (words75, 77, "")
    assert cut_to_tokens(words75 + " dawn", clip_tokenizers) == (words75, 77, "dawn")
    assert cut_to_tokens(words75, clip_tokenizers, max_tokens=10) == (" ".join(["forest"] * 8), 10,
                                                                       " ".join(["forest"] * 67))
    # One word longer than the limit (no spaces at all) is cut inside the word.
    blob = "x" * 500
    kept, tokens, cut = cut_to_tokens(blob, clip_tokenizers)
    assert tokens == count_tokens(kept, clip_tokenizers) <= 77 and kept + cut == blob
    assert count_tokens(blob[:len(kept) + 1], clip_tokenizers) > 77
    with pytest.raises(ValueError, match="at least 2"):
        cut_to_tokens("forest", clip_tokenizers, max_tokens=1)


def reference_cut(text: str, tokenizers) -> tuple[str, int, str]:
    """The cut done the slow, obvious way: the longest run of whole words that every tokenizer
    takes whole (tokenizing each prefix), or a character prefix of a first word that alone is too long."""
    text = text.strip()
    count = lambda t: max(len(tok(t)["input_ids"]) for tok in tokenizers)  # noqa: E731
    if count(text) <= 77:
        return text, count(text), ""
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    fits = [e for e in ends if count(text[:e].rstrip(" ,;:")) <= 77]
    if fits:
        kept = text[:fits[-1]].rstrip(" ,;:")
        return kept, count(kept), text[fits[-1]:].strip()
    n = max(n for n in range(len(text) + 1) if count(text[:n]) <= 77)
    return text[:n], count(text[:n]), text[n:].strip()


@pytest.mark.parametrize("text", [long_reply(), long_reply(40), " ".join(["비 오는 밤거리 🌧️"] * 12), "x" * 600],
                         ids=["300 words", "40 words", "korean", "one long word"])
def test_offsets_cut_equals_the_word_by_word_reference(clip_tokenizers, text):
    fast = cut_to_tokens(text, clip_tokenizers)
    assert fast == reference_cut(text, clip_tokenizers)
    assert fast[1] == count_tokens(fast[0], clip_tokenizers) <= 77


def test_count_tokens_takes_one_or_several_tokenizers(clip_tokenizers):
    assert count_tokens("a photo of a cat", clip_tokenizers[0]) == 7
    assert count_tokens(long_reply(), clip_tokenizers) == 367  # no truncation
    assert count_tokens("비 오는 밤거리 🌧️", clip_tokenizers) == 19  # Korean and emoji: byte-level tokens


# ----------------------------------------------------------------------------------------------
# Korean and emoji through the fallback
# ----------------------------------------------------------------------------------------------
def test_fallback_with_korean_and_emoji_counts_correctly(clip_tokenizers):
    keyword = "비 오는 밤거리 🌧️"
    result = fallback_prompt(keyword, "calm, warm", clip_tokenizers, ["Prompt written from the template: x."])
    assert result.prompt == ("비 오는 밤거리 🌧️, calm, warm, atmospheric background, cinematic lighting, "
                             "highly detailed photograph")
    assert result.tokens == 33 == max(len(t(result.prompt)["input_ids"]) for t in clip_tokenizers)
    assert result.cut == "" and result.source == "template"
    assert result.notices == [
        "Prompt written from the template: x.",
        'The keyword "비 오는 밤거리 🌧️" went to SDXL untranslated: SDXL understands English best, '
        "so an English keyword gives a closer result."]


def test_fallback_cuts_a_long_korean_keyword(clip_tokenizers):
    keyword = " ".join(["비 오는 밤거리"] * 8)  # 14 tokens per repeat: far over 77
    result = fallback_prompt(keyword, "", clip_tokenizers)
    assert result.prompt == "비 오는 밤거리 비 오는 밤거리 비 오는 밤거리 비 오는 밤거리 비 오는 밤거리 비"
    assert result.tokens == 74 == max(len(t(result.prompt)["input_ids"]) for t in clip_tokenizers)
    assert count_tokens(result.prompt + " 오는", clip_tokenizers) == 79  # the next word does not fit
    assert result.cut == ("오는 밤거리 비 오는 밤거리 비 오는 밤거리, atmospheric background, cinematic lighting, "
                          "highly detailed photograph")
    assert result.notices == [
        'The keyword "비 오는 밤거리 비 오는 밤거리 비 오는 밤거리 비 오는 밤거리 비…" went to SDXL untranslated: '
        "SDXL understands English best, so an English keyword gives a closer result.",
        'The prompt was cut to 77 CLIP tokens, the most SDXL reads; dropped: "오는 밤거리 비 오는 밤거리 비 오는 '
        '밤거리, atmospheric background, cinematic lighting, highly…".']


# ----------------------------------------------------------------------------------------------
# Every way Ollama can fail ends in the template prompt and a notice naming cause and fix
# ----------------------------------------------------------------------------------------------
FAILURES = {
    "not pulled": (lambda fake: fake.remove("llama2"),
                   "the Ollama model llama2 is not pulled (run `ollama pull llama2`)"),
    "http 500": (lambda fake: fake.script("llama2", status=500, error="llama runner process has terminated"),
                 "Ollama answered HTTP 500 for llama2: llama runner process has terminated "
                 "(see the `ollama serve` log)"),
    "empty": (lambda fake: fake.script("llama2", text=""), "llama2 gave an empty reply (try again, or another seed)"),
    "blank": (lambda fake: fake.script("llama2", text=" \n\n "),
              "llama2 gave an empty reply (try again, or another seed)"),
    "no letters": (lambda fake: fake.script("llama2", text="... 1 2 3 !!! 🌲"),
                   "llama2 gave a reply without words (try again, or another seed)"),
    "only a preamble": (lambda fake: fake.script("llama2", text="Sure! Here is the prompt you asked for:"),
                        "llama2 gave a reply with no prompt in it (try again, or another seed)"),
    "just sure": (lambda fake: fake.script("llama2", text="Sure."),
                        "llama2 gave a reply with no prompt in it (try again, or another seed)"),
    "not json": (lambda fake: fake.script("llama2", raw_body=b"<html><body>502 Bad Gateway</body></html>"),
                 "the reply from {url} is not Ollama's JSON (is OLLAMA_HOST an Ollama server?)"),
    "refusal": (lambda fake: fake.script("llama2", text="I'm sorry, but I cannot create a prompt that "
                                         "combines these keywords as it may be harmful."),
                'llama2 refused ("I\'m sorry, but I cannot create a prompt…"; try another keyword or seed)'),
    "as an ai": (lambda fake: fake.script("llama2", text="As an AI language model, I am not able to "
                                          "generate images."),
                 'llama2 refused ("As an AI language model, I am not…"; try another keyword or seed)'),
    "apology": (lambda fake: fake.script("llama2", text="I apologize, but I cannot fulfill your request."),
                'llama2 refused ("I apologize, but I cannot fulfill your request…"; try another keyword or seed)'),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_ollama_failures_fall_back_to_the_template(fake_ollama, client, clip_tokenizers, failure):
    arrange, cause = FAILURES[failure]
    arrange(fake_ollama)
    result = write_prompt("forest", MOOD, client, clip_tokenizers)
    assert result == PromptResult(FALLBACK_FOREST, 19, "", "template",
                                  [f"Prompt written from the template: {cause.format(url=fake_ollama.url)}."])


def test_ollama_not_running(clip_tokenizers, photo):
    url = f"http://127.0.0.1:{closed_port()}"
    client = make_client(url, 5.0)
    start = time.monotonic()
    result = write_prompt("forest", MOOD, client, clip_tokenizers)
    mood = describe_mood(photo, client)
    assert time.monotonic() - start < 2.0  # refused at once, no waiting for the time-out
    fix = f"Ollama is not running at {url} (start it with `ollama serve`)"
    assert result == PromptResult(FALLBACK_FOREST, 19, "", "template", [f"Prompt written from the template: {fix}."])
    assert mood == MoodResult("", [], "unavailable", [f"No mood keywords: {fix}; type the mood yourself if you like."])
    assert ollama_status(client, ("llava", "llama2")) == f"Ollama not running at {url}: start it with `ollama serve`"


@pytest.mark.parametrize("arrange, cause", [
    (lambda fake: fake.remove("llava"), "the Ollama model llava is not pulled (run `ollama pull llava`)"),
    (lambda fake: fake.script("llava", status=500, error="out of memory"),
     "Ollama answered HTTP 500 for llava: out of memory (see the `ollama serve` log)"),
    (lambda fake: fake.script("llava", text=""), "llava gave an empty reply (try again, or another seed)"),
    (lambda fake: fake.script("llava", text="The image shows a person standing in front of a wall."),
     "llava named no mood keywords (try again, or another seed)"),
    (lambda fake: fake.script("llava", text="I'm sorry, I can't help with that."),
     'llava refused ("I\'m sorry, I can\'t help with that…"; try another keyword or seed)'),
])
def test_mood_failures_leave_the_mood_empty(fake_ollama, client, photo, arrange, cause):
    arrange(fake_ollama)
    assert describe_mood(photo, client) == MoodResult(
        "", [], "unavailable", [f"No mood keywords: {cause}; type the mood yourself if you like."])


@pytest.mark.parametrize("slow", ["late reply", "trickling reply"])
def test_a_slow_server_is_cut_off_at_the_time_out(fake_ollama, clip_tokenizers, photo, slow):
    timeout = 1.0
    if slow == "late reply":  # httpx's read time-out alone would catch this one
        fake_ollama.script("llama2", text=FOREST_PROMPT, delay=3.0)
        fake_ollama.script("llava", text=MOOD, delay=3.0)
    else:  # a word every 0.4 s never trips httpx's read time-out; only the deadline stops it
        fake_ollama.script("llama2", text=long_reply(20), chunk_delay=0.4)
        fake_ollama.script("llava", text="calm, warm, cozy, soft, quiet, gentle", chunk_delay=0.4)
    client = make_client(fake_ollama.url, timeout)

    start = time.monotonic()
    result = write_prompt("forest", MOOD, client, clip_tokenizers)
    assert time.monotonic() - start < timeout + 1.5
    assert result == PromptResult(FALLBACK_FOREST, 19, "", "template", [
        "Prompt written from the template: llama2 did not answer within 1 s (the model may still be "
        "loading: try again, or raise BACKDROP_OLLAMA_TIMEOUT)."])

    start = time.monotonic()
    mood = describe_mood(photo, client)
    assert time.monotonic() - start < timeout + 1.5
    assert mood.source == "unavailable" and mood.notices == [
        "No mood keywords: llava did not answer within 1 s (the model may still be loading: try again, "
        "or raise BACKDROP_OLLAMA_TIMEOUT); type the mood yourself if you like."]


# ----------------------------------------------------------------------------------------------
# Status and pulling
# ----------------------------------------------------------------------------------------------
def test_ollama_status(fake_ollama, client):
    assert ollama_status(client, ("llava", "llama2")) == "Ollama: llava, llama2 ready"
    fake_ollama.remove("llama2")
    assert ollama_status(client, ("llava", "llama2")) == "Ollama: llama2 not pulled (ollama pull llama2)"
    assert ollama_status(client, ("llava:13b", "llama2")) == (
        "Ollama: llava:13b, llama2 not pulled (ollama pull llava:13b; ollama pull llama2)")


def test_pull_model_reports_progress(fake_ollama, client):
    fake_ollama.remove("llama2")
    fake_ollama.pullable["llama2"] = Script(text=FOREST_PROMPT)
    progress: list[tuple[str, int, int]] = []
    client.pull("llama2", lambda status, done, total: progress.append((status, done, total)))

    assert progress == [("pulling manifest", 0, 0), ("pulling 0123", 0, 100), ("pulling 0123", 50, 100),
                        ("pulling 0123", 100, 100), ("verifying sha256 digest", 0, 0), ("success", 0, 0)]
    assert fake_ollama.bodies("/api/pull") == [{"model": "llama2", "insecure": False, "stream": True}]
    assert ollama_status(client, ("llava", "llama2")) == "Ollama: llava, llama2 ready"


def test_pull_model_failures_are_one_line(client):
    with pytest.raises(RuntimeError, match=r"^cannot pull nosuchmodel: pull model manifest: file does not exist$"):
        client.pull("nosuchmodel")
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(RuntimeError) as caught:
        make_client(url, 5.0).pull("llava")
    assert str(caught.value) == f"cannot pull llava: Ollama is not running at {url} (start it with `ollama serve`)"


# ----------------------------------------------------------------------------------------------
# The user's own prompt, and the tokenizers
# ----------------------------------------------------------------------------------------------
def test_user_prompt(clip_tokenizers):
    assert user_prompt("misty forest\nsoft light.\n\n award winning  ", clip_tokenizers) == PromptResult(
        "misty forest, soft light, award winning", 10, "", "user", [])
    long = " ".join(["forest"] * 80)
    assert user_prompt(long, clip_tokenizers) == PromptResult(
        " ".join(["forest"] * 75), 77, "forest forest forest forest forest", "user",
        ['The prompt was cut to 77 CLIP tokens, the most SDXL reads; dropped: "forest forest forest forest forest".'])
    with pytest.raises(ValueError, match="^the prompt is empty$"):
        user_prompt(" \n ", clip_tokenizers)


def test_load_tokenizers_from_an_sdxl_folder(tmp_path, clip_tokenizers):
    folder = tmp_path / "sdxl"
    clip_tokenizers[0].save_pretrained(folder / "tokenizer")
    clip_tokenizers[1].save_pretrained(folder / "tokenizer_2")
    tokenizers = load_tokenizers(str(folder))
    assert load_tokenizers(str(folder)) is tokenizers  # cached
    assert [t.pad_token for t in tokenizers] == ["<|endoftext|>", "!"]
    assert count_tokens(long_reply(), tokenizers) == count_tokens(long_reply(), clip_tokenizers)


def test_load_tokenizers_errors_are_one_line(tmp_path):
    with pytest.raises(RuntimeError, match=r"^cannot load the SDXL tokenizers: no folder /no/such/sdxl$"):
        load_tokenizers("/no/such/sdxl")
    # conftest sets HF_HUB_OFFLINE: a hub id that is not in the cache cannot load
    with pytest.raises(RuntimeError) as caught:
        load_tokenizers("backdrop-tests/not-downloaded-sdxl")
    assert str(caught.value).startswith("cannot load the SDXL tokenizer backdrop-tests/not-downloaded-sdxl/tokenizer: ")
    assert "\n" not in str(caught.value)


# ----------------------------------------------------------------------------------------------
# Weight marks and what each of SDXL's two text encoders reads (issue 11.1)
# ----------------------------------------------------------------------------------------------
QUALITY_PLAIN = ("realistic photography, realism, realistic, super-detailed, true-to-life, best quality, balanced, "
                 "well-defined, clear, well-defined facial features, detailed faces")


def test_weight_marks_are_parsed_and_never_counted(clip_tokenizers):
    fragments = parse_weights("misty forest, realistic photography+++, realism++")
    assert fragments == [Fragment("misty forest, "), Fragment("realistic photography", 3), Fragment(", "),
                         Fragment("realism", 2)]
    assert [round(f.weight, 4) for f in fragments] == [1.0, 1.331, 1.0, 1.21]  # compel's 1.1 per "+"
    assert plain_text(SEED_QUALITY) == QUALITY_PLAIN
    assert parse_weights("a ball++ in the forest, 2+2, + light") == [
        Fragment("a ball", 2), Fragment(" in the forest, 2+2, + light")]  # only a "+" run after a word weights
    assert count_tokens(SEED_QUALITY, clip_tokenizers) == count_tokens(QUALITY_PLAIN, clip_tokenizers) == 38
    # The cut counts what the tokenizers read and keeps the marks on what it keeps.
    assert cut_to_tokens(" ".join(["forest++"] * 80), clip_tokenizers) == (
        " ".join(["forest++"] * 75), 77, " ".join(["forest"] * 5))


def test_second_prompt_is_the_scene_then_the_quality_words_that_fit(clip_tokenizers):
    tokenizer, tokenizer_2 = clip_tokenizers
    both = second_prompt(FOREST_PROMPT, SEED_QUALITY, clip_tokenizers)
    assert both == PromptResult(FOREST_PROMPT + ", " + SEED_QUALITY, 51, "", "scene+quality", [])
    assert len(tokenizer_2(FOREST_PROMPT + ", " + QUALITY_PLAIN)["input_ids"]) == 51

    scene = " ".join(["forest"] * 60)  # 62 tokens: the scene stays whole, quality words are dropped first
    long = second_prompt(scene, SEED_QUALITY, clip_tokenizers)
    assert long.prompt == scene + ", realistic photography+++, realism++, realistic++, super-detailed++"
    assert long.tokens == 73 and count_tokens(long.prompt + ", true-to-life", tokenizer_2) == 79
    assert long.cut == ("true-to-life++, best quality++, balanced++, well-defined++, clear++, "
                        "well-defined facial features++, detailed faces++")
    full = " ".join(["forest"] * 75)  # 77 tokens: no room for any quality word
    assert second_prompt(full, SEED_QUALITY, clip_tokenizers) == PromptResult(full, 77, SEED_QUALITY, "scene+quality", [])
    assert second_prompt(FOREST_PROMPT, "", clip_tokenizers).prompt == FOREST_PROMPT


def _padded(tokenizer, text: str) -> list[int]:
    return tokenizer(text, padding="max_length", max_length=77)["input_ids"]


def test_what_each_text_encoder_receives(tiny_settings, clip_tokenizers):
    # A 62-token prompt: the scene goes whole to both encoders; only 4 quality phrases still fit.
    scene = " ".join(["forest"] * 60)
    quality_kept = "realistic photography, realism, realistic, super-detailed"

    from conftest import make_photo

    from pipelines.diffusion.sdxl_models import load_sdxl_from_settings
    from pipelines.editing import run_edit
    from pipelines.types import EditRequest

    components = load_sdxl_from_settings(tiny_settings)
    received: dict[str, list[list[int]]] = {"tokenizer": [], "tokenizer_2": []}
    hooks = [encoder.register_forward_pre_hook(lambda module, args, name=name: received[name].append(args[0][0].tolist()))
             for name, encoder in (("tokenizer", components.text_encoder), ("tokenizer_2", components.text_encoder_2))]
    photo = make_photo(96, 64)
    mask = np.zeros((64, 96), np.float32)
    mask[:, 48:] = 1
    try:
        result = run_edit(EditRequest(image=photo, mask=mask, prompt=scene, num_inference_steps=1, seed=3),
                          tiny_settings, save=False)
    finally:
        for hook in hooks:
            hook.remove()

    tokenizer, tokenizer_2 = clip_tokenizers
    # The first encoder (CLIP ViT-L) reads the scene; the second (OpenCLIP bigG) the scene, then the
    # quality words that fit, weight marks left out; each padded to 77 with its own pad token.
    assert result.prompt == scene and result.prompt_2.startswith(scene + ", ")
    assert received["tokenizer"][0] == _padded(tokenizer, scene)
    assert received["tokenizer_2"][0] == _padded(tokenizer_2, scene + ", " + quality_kept)
    assert received["tokenizer_2"][1] == received["tokenizer_2"][0]  # compel's weighted pass reads the same ids
    assert result.prompt_2_tokens == len(tokenizer_2(scene + ", " + quality_kept)["input_ids"]) == 73
    assert result.prompt_tokens == len(tokenizer(scene)["input_ids"]) == 62
    # No "+" reaches a tokenizer: no token holding a "+" in any text any encoder read.
    plus_ids = {i for token, i in tokenizer.get_vocab().items() if "+" in token}
    assert set(tokenizer.convert_tokens_to_ids(["+", "+</w>", "++</w>", "+++</w>"])) <= plus_ids
    assert not plus_ids & {i for ids in received["tokenizer"] + received["tokenizer_2"] for i in ids}


def test_weights_scale_the_second_encoders_hidden_states(tiny_sdxl_dir, clip_tokenizers):
    import torch

    from pipelines.diffusion.blending import encode_prompt
    from pipelines.diffusion.sdxl_models import load_sdxl

    components = load_sdxl(str(tiny_sdxl_dir))
    scene = "misty forest"
    plain, plain_pooled = encode_prompt(components, scene, scene + ", realistic photography, realism")
    weighted, weighted_pooled = encode_prompt(components, scene, scene + ", realistic photography+++, realism++")

    width_1 = components.text_encoder.config.hidden_size
    assert torch.equal(weighted[..., :width_1], plain[..., :width_1])  # the first encoder reads no marks
    assert torch.equal(weighted_pooled, plain_pooled)  # compel leaves the pooled vector unweighted
    # tokens: BOS misty forest , realistic photography , realism EOS  -> weighted at 4, 5 (1.331) and 7 (1.21)
    ids = clip_tokenizers[1]("misty forest, realistic photography, realism", padding="max_length",
                             max_length=77, return_tensors="pt").input_ids
    empty_ids = clip_tokenizers[1]("", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        h = components.text_encoder_2(ids, output_hidden_states=True).hidden_states[-2]
        empty = components.text_encoder_2(empty_ids, output_hidden_states=True).hidden_states[-2]
    expected = h.clone()
    for position, weight in ((4, 1.1 ** 3), (5, 1.1 ** 3), (7, 1.1 ** 2)):
        expected[:, position] = empty[:, position] + (h[:, position] - empty[:, position]) * weight
    second = weighted[..., width_1:]
    assert torch.allclose(second, expected, atol=1e-5)
    changed = (second - plain[..., width_1:]).abs().amax(-1)[0]
    assert changed[[4, 5, 7]].min() > 1e-2 and changed[[0, 1, 2, 3, 6, 8]].max() < 1e-5


def test_json_and_png_record_the_prompt_2_used(tiny_env, tmp_path, monkeypatch, capsys):
    import json

    from conftest import make_photo

    from pipelines.entry.cli import main
    from pipelines.outputs import read_parameters

    for name in ("BACKDROP_SDXL_MODEL", "BACKDROP_OUTPUT_DIR", "OLLAMA_HOST", "BACKDROP_DEVICE",
                 "BACKDROP_WORKING_PIXELS", "BACKDROP_CHECKPOINT_DIR"):
        monkeypatch.setenv(name, tiny_env[name])
    make_photo(96, 64).save(tmp_path / "photo.png")
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (48, 0, 96, 64))
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    assert main(["edit", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "mask.png"), "--prompt", "a galaxy",
                 "--steps", "1", "--seed", "5", "--out", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["prompt"] == "a galaxy" and record["prompt_tokens"] == 4
    assert record["prompt_2"] == "a galaxy, " + SEED_QUALITY
    assert record["prompt_2_tokens"] == 4 + 38 - 1  # one BOS/EOS pair, and a comma between
    assert read_parameters(out)["Prompt 2"] == record["prompt_2"]
