"""The Ollama transport: our client for one Ollama server, over the official `ollama` client.

`OllamaClient` holds its own host and time-out, so no private attribute of `ollama.Client` is read.
Every call returns within the time-out or raises `OllamaUnavailable` with one line naming the cause
and the fix (not running, model not pulled, HTTP error, not Ollama's JSON, too slow).

    client = OllamaClient("http://127.0.0.1:11434", timeout=60)
    client.chat("llama2", [{"role": "user", "content": "..."}], {"temperature": 0.7}, "10m")
    client.missing_models(("llava", "llama2"))   # ["llama2"]: not pulled yet
    client.loaded()                               # {"llava:latest": 4_800_000_000}: `ollama ps`
    client.unload(["llava:latest"])               # keep_alive 0: its GPU memory is freed

`ollama` and `httpx` are imported where used, so importing this module is cheap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class OllamaUnavailable(Exception):
    """Ollama could not give a usable reply; the message names the cause and the fix."""


class OllamaClient:
    """One Ollama server, reached through the official `ollama.Client`.

    Attributes:
        host: the server address as configured, e.g. "http://127.0.0.1:11434" (Settings.ollama_host).
        timeout: seconds (Settings.ollama_timeout). It bounds every HTTP wait, and is also the deadline
            of a whole `chat` or `missing_models` call, so a slowly trickling reply cannot block longer.
    """

    def __init__(self, host: str, timeout: float) -> None:
        import ollama

        self.host = host.rstrip("/")
        self.timeout = float(timeout)
        self.client = ollama.Client(host=host, timeout=timeout)

    def chat(self, model: str, messages: list[dict], options: dict[str, Any], keep_alive: str,
             started: float | None = None) -> str:
        """The model's whole reply to `messages`.

        Args:
            model: e.g. "llama2".
            messages: Ollama chat messages ({"role", "content", optional "images"}).
            options: Ollama's sampling options ({"temperature": 0.7, "seed": 42}).
            keep_alive: how long Ollama keeps the model loaded afterwards ("10m").
            started: a `time.monotonic()` value the deadline counts from (default: now), so the
                caller's own preparation (encoding a photo) counts against the time-out too.

        Raises:
            OllamaUnavailable: one line naming the cause and the fix.
        """
        def run(cancel: threading.Event) -> str:
            parts: list[str] = []
            # Streamed so that the reading thread can stop between chunks once the caller gave up.
            stream = self.client.chat(model=model, messages=messages, options=options,
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
            return _run_with_deadline(run, self.timeout, model, started)
        except Exception as e:  # noqa: BLE001 - every Ollama problem becomes one line, never a crash
            raise OllamaUnavailable(self.explain(e, model)) from e

    def missing_models(self, models: tuple[str, ...]) -> list[str]:
        """The models of `models` that Ollama has not pulled, in order.

        Raises:
            OllamaUnavailable: Ollama could not be asked (one line naming the cause and the fix).
        """
        listed = self._ask(self.client.list, "Ollama")
        names = {m.model for m in listed.models if m.model}
        return [m for m in models if not _is_installed(m, names)]

    def loaded(self) -> dict[str, int]:
        """The models Ollama holds in memory now (`ollama ps`), each with the bytes it holds on a GPU:
        {"llava:latest": 4_800_000_000, ...}; 0 for a model Ollama runs on the CPU.

        Raises:
            OllamaUnavailable: Ollama could not be asked (one line naming the cause and the fix).
        """
        listed = self._ask(self.client.ps, "Ollama")
        return {m.model or m.name or "?": int(m.size_vram or 0) for m in listed.models}

    def unload(self, models: list[str] | tuple[str, ...]) -> None:
        """Ask Ollama to free `models`' memory now: a generate request without a prompt and with
        `keep_alive: 0` for each, which is how Ollama's API says "unload" (as `ollama stop` does).

        Raises:
            OllamaUnavailable: one line naming the model, the cause and the fix.
        """
        for model in models:
            self._ask(lambda m=model: self.client.generate(model=m, keep_alive=0), model)

    def _ask(self, call: Callable[[], Any], what: str) -> Any:
        """`call()` within the time-out, any failure as one `OllamaUnavailable` line."""
        try:
            return _run_with_deadline(lambda cancel: call(), self.timeout, what)
        except Exception as e:  # noqa: BLE001 - every failure becomes one line
            raise OllamaUnavailable(self.explain(e, what)) from e

    def pull(self, model: str, on_progress: Callable[[str, int, int], None] | None = None) -> None:
        """Download `model` into Ollama (`ollama pull`); the time-out bounds each wait for progress.

        on_progress gets every progress line Ollama sends as (status, done, total) bytes, e.g.
        ("pulling 170370233dd5", 2097152, 4108916384); 0, 0 when unknown.

        Raises:
            RuntimeError: one line: Ollama is not running, the model does not exist, or the pull broke.
        """
        import httpx
        import ollama

        status = ""
        try:
            for progress in self.client.pull(model, stream=True):
                status = progress.status or ""
                if on_progress is not None:
                    on_progress(status, int(progress.completed or 0), int(progress.total or 0))
        except (ConnectionError, httpx.ConnectError) as e:
            raise RuntimeError(f"cannot pull {model}: Ollama is not running at {self.host} "
                               "(start it with `ollama serve`)") from e
        except ollama.ResponseError as e:
            raise RuntimeError(f"cannot pull {model}: {str(e.error).strip()}") from e
        except httpx.TimeoutException as e:
            raise RuntimeError(f"cannot pull {model}: no progress for {self.timeout:g} s") from e
        except (httpx.HTTPError, ValueError) as e:
            raise RuntimeError(f"cannot pull {model}: {type(e).__name__}: {e}") from e
        if status != "success":
            raise RuntimeError(f"cannot pull {model}: Ollama stopped at \"{status or 'nothing'}\"")

    def explain(self, error: BaseException, model: str) -> str:
        """One line naming why a call to `model` failed and what to do about it."""
        import httpx
        import ollama

        if isinstance(error, OllamaUnavailable):
            return str(error)
        if isinstance(error, (ConnectionError, httpx.ConnectError)):
            return f"Ollama is not running at {self.host} (start it with `ollama serve`)"
        if isinstance(error, httpx.TimeoutException):
            return _too_slow(model, self.timeout)
        if isinstance(error, ollama.ResponseError):
            message = str(error.error).strip().splitlines()[0] if str(error.error).strip() else "no message"
            if error.status_code == 404 or "not found" in message.lower():
                return f"the Ollama model {model} is not pulled (run `ollama pull {model}`)"
            status = f"HTTP {error.status_code}" if error.status_code > 0 else "an error"
            return f"Ollama answered {status} for {model}: {message} (see the `ollama serve` log)"
        if isinstance(error, (ValueError, httpx.DecodingError)):  # json.JSONDecodeError, pydantic errors
            return f"the reply from {self.host} is not Ollama's JSON (is OLLAMA_HOST an Ollama server?)"
        if isinstance(error, httpx.HTTPError):
            return (f"the connection to Ollama at {self.host} broke: {type(error).__name__} "
                    "(is `ollama serve` healthy?)")
        return f"Ollama call to {model} failed: {type(error).__name__}: {error}"


def make_client(host: str, timeout: float) -> OllamaClient:
    """Our client for the Ollama server at `host`, every call bounded by `timeout` seconds."""
    return OllamaClient(host, timeout)


def ollama_status(client: OllamaClient, models: tuple[str, ...]) -> str:
    """One line for the page about Ollama and the models the app needs.

    Returns:
        "Ollama: llava, llama2 ready", "Ollama not running at http://...: start it with
        `ollama serve`", "Ollama: llama2 not pulled (ollama pull llama2)", or another one-line cause.
    """
    import httpx

    try:
        missing = client.missing_models(models)
    except OllamaUnavailable as e:  # a status line, never a crash
        if isinstance(e.__cause__, (ConnectionError, httpx.ConnectError)):
            return f"Ollama not running at {client.host}: start it with `ollama serve`"
        return f"Ollama: {e}"
    if missing:
        fixes = "; ".join(f"ollama pull {m}" for m in missing)
        return f"Ollama: {', '.join(missing)} not pulled ({fixes})"
    return f"Ollama: {', '.join(models)} ready"


def _is_installed(model: str, names: set[str]) -> bool:
    # "llava" means "llava:latest"; "llava:13b" must match exactly.
    return model in names or (":" not in model and f"{model}:latest" in names)


def _too_slow(model: str, timeout: float) -> str:
    return (f"{model} did not answer within {timeout:g} s (the model may still be loading: "
            "try again, or raise BACKDROP_OLLAMA_TIMEOUT)")


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
        raise OllamaUnavailable(_too_slow(what, timeout))
    if "error" in box:
        raise box["error"]
    return box["value"]
