"""The API for programs on the real app: `python app.py --mcp` and `python app.py --auth ...` with the
tiny models and the fake Ollama, driven by `gradio_client` and by the official `mcp` client.

Both apps start side by side, once for the module (their start dominates this file's time).
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import httpx
import numpy as np
import pytest
from app_server import AppServer
from conftest import LLAMA_PROMPT, LLAVA_MOOD, app_env, make_photo, make_tiny_settings, start_fake_ollama
from PIL import Image

from pipelines.prompting import count_tokens

USER = ("ada", "lovelace-1843")
# The keys of `python -m pipelines edit --json` (tests/test_cli.py reads the same record).
RECORD_KEYS = {"outputs", "seeds", "scores", "edge", "prompt", "prompt_tokens", "prompt_2", "prompt_2_tokens", "mood",
               "notices", "timings", "safety", "background", "canvas"}
NOT_AN_IMAGE = "the file is not an image Backdrop can read (PNG, JPEG, WebP, ...)"


@pytest.fixture(scope="module")
def apps(tmp_path_factory, tiny_sdxl_dir, tiny_sam_checkpoint):
    """{"open": the app with --mcp, "locked": the app with --auth and a deployment minimum of medium}."""
    ollama = start_fake_ollama()
    started = {}
    for name, args, extra in (("open", ("--mcp",), {}),
                              ("locked", ("--auth", ":".join(USER)), {"BACKDROP_MIN_SAFETY": "medium"})):
        folder = tmp_path_factory.mktemp(name)
        settings = make_tiny_settings(folder, tiny_sdxl_dir, tiny_sam_checkpoint, ollama.url)
        started[name] = AppServer({**app_env(settings), **extra}, folder / "app.log", args)
        started[name].settings = settings
    failures = [failed for app in started.values() if (failed := app.wait()) is not None]
    if failures:
        for app in started.values():
            app.stop()
        pytest.fail("\n".join(failures))
    yield started
    for app in started.values():
        app.stop()
    ollama.stop()


@pytest.fixture(scope="module")
def client(apps):
    from gradio_client import Client

    return Client(apps["open"].url, verbose=False)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "photo.png"
    make_photo(160, 120).save(path)
    return path


def test_only_the_programs_endpoints_are_listed(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {"/edit", "/mask", "/prompt"}
    assert api["unnamed_endpoints"] == {}
    edit = {p["parameter_name"]: p for p in api["named_endpoints"]["/edit"]["parameters"]}
    assert list(edit) == ["photo", "points", "mask", "subject", "keyword", "mood", "prompt", "negative_prompt", "safety",
                          "erased", "steps", "guidance", "strength", "seed", "candidates", "edge", "grow",
                          "feather", "edit_subject", "background", "background_picture", "canvas", "place", "fast",
                          # issue 21: every option of the request reaches /edit, these four were missing
                          "prompt_2", "sld_concept", "scheduler", "mask_candidate"]
    assert edit["steps"]["parameter_default"] == 30 and edit["edge"]["parameter_default"] == "matte"
    # The page's handlers are private: a client cannot call one.
    with pytest.raises(ValueError):
        client.predict(api_name="/on_generate")


def test_mask_then_edit_keeps_the_subject_exact(client, apps, photo, clip_tokenizers):
    from gradio_client import handle_file

    mask_file, mask_record = client.predict(photo=handle_file(str(photo)), points="80,60", api_name="/mask")
    mask = np.asarray(Image.open(mask_file))
    assert Image.open(mask_file).format == "PNG" and mask.shape == (120, 160)
    assert set(np.unique(mask)) == {0, 255}
    kept = mask == 0  # the tiny SAM's subject: random weights, so not the disk, but never empty or all
    assert 0 < kept.sum() < kept.size
    scores = mask_record["scores"]
    assert mask_record["method"] == "sam" and len(scores) == 3 and scores == sorted(scores, reverse=True)

    images, record = client.predict(photo=handle_file(str(photo)), points="80,60", keyword="forest",
                                    steps=2, seed=7, edge="hard", api_name="/edit")
    assert set(record) == RECORD_KEYS
    assert record["seeds"] == [7] and record["edge"] == "hard" and len(images) == 1
    assert record["mood"] == LLAVA_MOOD and record["prompt"] == LLAMA_PROMPT
    assert record["prompt_tokens"] == count_tokens(LLAMA_PROMPT, clip_tokenizers)
    assert record["safety"]["preset"] == "Off" and record["safety"]["checker"] in ("note", "unavailable")
    assert [check["seed"] for check in record["safety"]["checks"]] == [7]  # the output check ran
    original = np.asarray(Image.open(photo))
    result = np.asarray(Image.open(images[0]))
    assert result.shape == original.shape
    # The hard edge keeps exactly what /mask called the subject, byte for byte; the rest is new.
    assert np.array_equal(result[kept], original[kept])
    assert (result[~kept] != original[~kept]).any(axis=-1).mean() > 0.5
    # The served file is the saved one, which the output folder itself never serves.
    saved = record["outputs"][0]
    assert open(images[0], "rb").read() == open(saved, "rb").read()
    assert saved.startswith(str(apps["open"].settings.output_dir))
    assert httpx.get(f"{apps['open'].url}/gradio_api/file={saved}").status_code == 403


def test_bad_input_gets_one_line(client, tmp_path, photo):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bogus = tmp_path / "notes.png"
    bogus.write_text("not a photo")
    with pytest.raises(AppError) as refused:
        client.predict(photo=handle_file(str(bogus)), points="80,60", api_name="/edit")
    assert str(refused.value) == NOT_AN_IMAGE
    with pytest.raises(AppError) as refused:
        client.predict(photo=handle_file(str(photo)), points="80;60", api_name="/edit")
    assert str(refused.value) == "'80' is not X,Y or X,Y,LABEL (label 1 subject, 0 not)"
    with pytest.raises(AppError) as refused:
        client.predict(photo=handle_file(str(photo)), points="80,60", steps=0, api_name="/edit")
    assert str(refused.value) == "steps must be between 1 and 200, got 0"


def test_a_plain_background_on_a_wider_canvas(client, photo, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    images, record = client.predict(photo=handle_file(str(photo)), points="80,60", edge="hard",
                                    background="white", canvas="1:1", place="top", api_name="/edit")
    assert record["background"].startswith("color") and record["canvas"]["width"] == 160
    result = np.asarray(Image.open(images[0]).convert("RGB"))
    assert result.shape == (160, 160, 3)
    assert (result[121:, :] == 255).all()  # below the photo (placed at the top): the colour, exactly
    with pytest.raises(AppError) as refused:  # a server path would read any image the server has
        client.predict(photo=handle_file(str(photo)), points="80,60", background=str(photo), api_name="/edit")
    assert str(refused.value) == "a picture background comes as the background_picture file, not a path"


def test_prompt_from_keyword_and_mood_or_from_the_photo(client, photo, clip_tokenizers):
    from gradio_client import handle_file

    typed = client.predict(keyword="forest", mood="calm, warm", api_name="/prompt")
    assert typed == {"prompt": LLAMA_PROMPT, "prompt_tokens": count_tokens(LLAMA_PROMPT, clip_tokenizers),
                     "mood": "calm, warm", "source": "llm", "notices": []}
    read = client.predict(keyword="forest", photo=handle_file(str(photo)), api_name="/prompt")
    assert read["mood"] == LLAVA_MOOD and read["prompt"] == LLAMA_PROMPT


def test_auth_and_the_deployment_minimum(apps, photo):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError, AuthenticationError

    url = apps["locked"].url
    with pytest.raises(AuthenticationError):
        Client(url, verbose=False)
    with pytest.raises(ValueError, match="Could not login"):
        Client(url, auth=(USER[0], "guess"), verbose=False)
    # Nor by hand: the endpoint itself wants the login (what curl would get).
    called = httpx.post(f"{url}/gradio_api/call/prompt", json={"data": ["forest", "calm", None]})
    assert called.status_code == 401
    client = Client(url, auth=USER, verbose=False)
    assert client.predict(keyword="forest", mood="calm", api_name="/prompt")["prompt"] == LLAMA_PROMPT
    with pytest.raises(AppError) as below:
        client.predict(photo=handle_file(str(photo)), points="80,60", safety="off", api_name="/edit")
    assert str(below.value) == "safety level 'off' is below this deployment's minimum 'medium'"


def test_mcp_lists_the_tools_and_edits(apps, photo):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def session():
        async with streamable_http_client(f"{apps['open'].url}/gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as mcp:
                await mcp.initialize()
                tools = {tool.name: tool for tool in (await mcp.list_tools()).tools}
                data = base64.b64encode(photo.read_bytes()).decode()
                done = await mcp.call_tool("edit", {"photo": f"data:image/png;base64,{data}", "points": "80,60",
                                                    "prompt": "a red barn", "steps": 1, "seed": 3, "edge": "hard"})
                return tools, done

    tools, done = asyncio.run(session())
    # The README's other transport for stdio-only clients (mcp-remote): SSE beside streamable HTTP.
    with httpx.stream("GET", f"{apps['open'].url}/gradio_api/mcp/sse", timeout=30) as sse:
        assert sse.status_code == 200 and sse.headers["content-type"].startswith("text/event-stream")
    assert set(tools) == {"edit", "mask", "prompt"}
    edit = tools["edit"]
    assert edit.inputSchema["required"] == ["photo"]
    assert edit.inputSchema["properties"]["points"]["description"].startswith("clicks in photo pixels")
    assert "pixel-exact" in edit.description
    assert not done.isError
    text = " ".join(part.text for part in done.content if part.type == "text")
    assert "'seeds': [3]" in text and "'prompt': 'a red barn'" in text


def test_programs_share_the_page_queue_and_locks():
    import app
    from pipelines.settings import Settings

    fns = {fn.api_name: fn for fn in app.build_demo(Settings()).fns.values()}
    # /edit waits for the same single GPU slot as the page's Generate; /mask shares the clicks' SAM.
    assert fns["edit"].concurrency_id == fns["on_generate"].concurrency_id == "gpu"
    assert fns["edit"].concurrency_limit == fns["on_generate"].concurrency_limit == 1
    assert fns["mask"].concurrency_id == fns["click"].concurrency_id == "sam"
    assert all(fn.queue for fn in (fns["edit"], fns["mask"], fns["prompt"]))
    internal = [name for name, fn in fns.items() if name not in ("edit", "mask", "prompt")]
    assert len(internal) >= 16 and all(fns[name].api_visibility == "private" for name in internal)


def test_mcp_is_refused_with_a_login():
    import app

    with pytest.raises(SystemExit) as exited:
        app.main(["--mcp", "--auth", "ada:lovelace"])
    assert str(exited.value) == "error: --mcp cannot be combined with --auth (Gradio's MCP server has no login)"


def test_served_results_leave_gradios_cache_after_the_configured_hours(tmp_path, monkeypatch):
    """A long-running page does not fill the disk: what `publish` hands out is a file this app's
    Blocks tracks, and Gradio's hourly sweep removes it once older than BACKDROP_CACHE_HOURS."""
    import time

    import app
    from gradio import route_utils
    from pipelines.settings import Settings

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    page = app.build_layout(Settings(cache_hours=2))
    assert page.demo.delete_cache == (3600, 2 * 3600)
    saved = tmp_path / "outputs" / "edit.png"
    saved.parent.mkdir()
    saved.write_bytes(b"\x89PNG result")
    served = page.files.move_resource_to_block_cache(str(saved))
    assert Path(served).exists() and Path(served).parent != saved.parent
    route_utils.delete_files_created_by_app(page.demo, age=2 * 3600)
    assert Path(served).exists()  # young: kept
    now = time.time()
    monkeypatch.setattr(route_utils, "datetime", _Clock(now + 2 * 3600 + 60))
    route_utils.delete_files_created_by_app(page.demo, age=2 * 3600)
    assert not Path(served).exists() and saved.exists()  # the cached copy went, the saved photo stayed


class _Clock:
    """`datetime` as route_utils uses it, with `now()` at a chosen time."""

    def __init__(self, now: float):
        import datetime

        self._now, self._datetime = now, datetime.datetime

    def now(self):
        return self._datetime.fromtimestamp(self._now)

    def fromtimestamp(self, stamp):
        return self._datetime.fromtimestamp(stamp)
