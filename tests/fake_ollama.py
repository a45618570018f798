"""A small HTTP server on 127.0.0.1 that speaks the Ollama API, for tests only.

The official `ollama` client talks to it over real HTTP. Each model is scripted with a reply (text, a
delay, an HTTP error); a model that is not scripted answers 404 "not found, try pulling it first",
as Ollama does. Every request body is recorded in `requests`. Models "in memory" are listed by
`/api/ps` with the bytes they hold on the GPU; a generate request without a prompt and with
`keep_alive: 0` unloads one, as Ollama does.

    server = FakeOllama().start()
    server.script("llava", text="calm, warm, cozy")
    server.script("llama2", status=500, error="out of memory")
    server.script("llama2", text="a slow reply", chunk_delay=0.5)  # streamed a word every 0.5 s
    server.loaded["llava:latest"] = 4_500_000_000  # `ollama ps` lists it, 4.5 GB on the GPU
    ...  # point the code at server.url
    server.stop()

Run it by hand (for the browser test, or to try the page without Ollama):
    python tests/fake_ollama.py --port 11434 --reply "llava=calm, warm" --reply "llama2=a forest"
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Script:
    text: str = ""  # the model's reply
    status: int = 200  # HTTP status; non-200 answers {"error": error}
    error: str = ""
    delay: float = 0.0  # seconds to wait before answering
    raw_body: bytes | None = None  # answer these bytes verbatim (protocol garbage)
    chunk_delay: float = 0.0  # seconds between streamed chunks (a reply that trickles in)


@dataclass
class Recorded:
    method: str
    path: str
    body: dict | None


@dataclass
class FakeOllama:
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    scripts: dict[str, Script] = field(default_factory=dict)
    pullable: dict[str, Script] = field(default_factory=dict)  # models /api/pull can install
    requests: list[Recorded] = field(default_factory=list)
    loaded: dict[str, int] = field(default_factory=dict)  # models in memory -> bytes on the GPU (/api/ps)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- scripting ---------------------------------------------------------------------------
    def script(self, model: str, text: str = "", status: int = 200, error: str = "",
               delay: float = 0.0, raw_body: bytes | None = None, chunk_delay: float = 0.0) -> None:
        self.scripts[_base(model)] = Script(text, status, error, delay, raw_body, chunk_delay)

    def remove(self, model: str) -> None:
        self.scripts.pop(_base(model), None)

    def bodies(self, path: str) -> list[dict]:
        """Recorded JSON bodies sent to `path`, oldest first."""
        with self._lock:
            return [r.body for r in self.requests if r.path == path and r.body is not None]

    # --- running -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> "FakeOllama":
        self._server = ThreadingHTTPServer((self.host, self.port), _handler_for(self))
        self._server.daemon_threads = True
        # a short poll interval: stop() (every test's teardown) returns in 0.05 s instead of 0.5 s
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- answering ---------------------------------------------------------------------------
    def _find(self, model: str) -> Script | None:
        return self.scripts.get(_base(model))

    def _record(self, method: str, path: str, body: dict | None) -> None:
        with self._lock:
            self.requests.append(Recorded(method, path, body))


def _base(model: str) -> str:
    return model.split(":")[0] if model.endswith(":latest") or ":" not in model else model


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _handler_for(fake: FakeOllama) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send_json(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send_stream(self, chunks: list[dict], chunk_delay: float = 0.0) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i, chunk in enumerate(chunks):
                if chunk_delay and i:
                    time.sleep(chunk_delay)
                line = json.dumps(chunk).encode() + b"\n"
                try:
                    self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client stopped reading (it gave up at its deadline)
            self.wfile.write(b"0\r\n\r\n")

        def _body(self) -> dict | None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw) if raw else {}
            except json.JSONDecodeError:
                return None

        def do_GET(self) -> None:
            fake._record("GET", self.path, None)
            if self.path == "/api/tags":
                models = [{"name": f"{m}:latest", "model": f"{m}:latest", "modified_at": _now(),
                           "size": 1, "digest": "0" * 64, "details": {"family": "llama"}}
                          for m in fake.scripts]
                return self._send_json(200, {"models": models})
            if self.path == "/api/ps":
                models = [{"name": m, "model": m, "size": vram, "digest": "0" * 64, "size_vram": vram,
                           "expires_at": _now(), "details": {"family": "llama"}}
                          for m, vram in list(fake.loaded.items())]
                return self._send_json(200, {"models": models})
            if self.path in ("/", "/api/version"):
                return self._send_json(200, {"version": "0.0.0-fake"})
            self._send_json(404, {"error": "not found"})

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            body = self._body()
            fake._record("POST", self.path, body)
            if body is None:
                return self._send_json(400, {"error": "invalid JSON body"})
            model = str(body.get("model") or body.get("name") or "")
            if self.path == "/api/pull":
                return self._pull(model, body)
            if self.path == "/api/generate" and body.get("keep_alive") == 0 and not body.get("prompt"):
                # Ollama's way to unload a model now: no prompt, keep_alive 0.
                fake.loaded.pop(model, None)
                fake.loaded.pop(f"{model}:latest", None)
                return self._send_json(200, {"model": model, "created_at": _now(), "response": "",
                                             "done": True, "done_reason": "unload"})
            script = fake._find(model)
            if script is None:
                return self._send_json(404, {"error": f'model "{model}" not found, try pulling it first'})
            if self.path == "/api/show":
                return self._send_json(200, {"modelfile": "", "parameters": "", "template": "",
                                             "details": {"family": "llama", "format": "gguf"},
                                             "capabilities": ["completion", "vision"]})
            if self.path not in ("/api/chat", "/api/generate"):
                return self._send_json(404, {"error": "not found"})
            if script.delay:
                time.sleep(script.delay)
            if script.raw_body is not None:
                self.send_response(script.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(script.raw_body)))
                self.end_headers()
                self.wfile.write(script.raw_body)
                return
            if script.status != 200:
                return self._send_json(script.status, {"error": script.error or "internal error"})
            chat = self.path == "/api/chat"

            def piece(text: str, done: bool) -> dict:
                out = {"model": model, "created_at": _now(), "done": done}
                if chat:
                    out["message"] = {"role": "assistant", "content": text}
                else:
                    out["response"] = text
                if done:
                    out.update(done_reason="stop", total_duration=1, eval_count=len(script.text.split()))
                return out

            if body.get("stream", True):
                words = script.text.split(" ")
                parts = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
                return self._send_stream([piece(p, False) for p in parts] + [piece("", True)],
                                         script.chunk_delay)
            self._send_json(200, piece(script.text, True))

        def _pull(self, model: str, body: dict) -> None:
            script = fake.pullable.get(_base(model))
            if script is None:
                return self._send_json(500, {"error": "pull model manifest: file does not exist"})
            chunks = [{"status": "pulling manifest"}]
            chunks += [{"status": "pulling 0123", "digest": "sha256:0123", "total": 100, "completed": c}
                       for c in (0, 50, 100)]
            chunks += [{"status": "verifying sha256 digest"}, {"status": "success"}]
            fake.scripts[_base(model)] = script
            if body.get("stream", True):
                return self._send_stream(chunks)
            self._send_json(200, chunks[-1])

    return Handler


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve a scripted fake Ollama API (tests only).")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reply", action="append", default=[], metavar="MODEL=TEXT")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every reply")
    args = parser.parse_args()
    fake = FakeOllama(port=args.port)
    for item in args.reply:
        name, _, text = item.partition("=")
        fake.script(name, text=text, delay=args.delay)
    fake.start()
    print(fake.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()
