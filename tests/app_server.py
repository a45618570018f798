"""`python app.py` in a subprocess for tests that drive the real page or its API."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago; nothing listens there once the socket is closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`python app.py ARGS` on a free port; its output is copied to `log`.

    Start several, then `wait` for each: they start side by side.
    """

    def __init__(self, env: dict, log: Path, args: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "app.py", *args], cwd=ROOT,
                                     env={**env, "BACKDROP_PORT": str(self.port)},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._started = threading.Event()
        threading.Thread(target=self._copy_log, daemon=True).start()

    def _copy_log(self) -> None:  # the app's output to a file, noting the line that says it serves
        with open(self.log, "w") as out:
            for line in self.proc.stdout:
                out.write(line)
                out.flush()
                if "Running on local URL" in line:
                    self._started.set()
        self._started.set()  # the app exited: stop waiting

    def wait(self, timeout: float = 120) -> str | None:
        """None once the app serves, else why not (with the end of its log)."""
        if not self._started.wait(timeout=timeout) or self.proc.poll() is not None:
            self.proc.kill()
            return "app did not start:\n" + self.log.read_text()[-3000:]
        return None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        sys.stderr.write(f"--- app log {self.url} (tail) ---\n" + self.log.read_text()[-4000:])
