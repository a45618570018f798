"""A tiny HTTP file server on 127.0.0.1 for the download tests: HTTP Range, a declared length that
lies, a connection cut short once; it records what it was asked and what it sent."""

from __future__ import annotations

import http.server
import threading


class FileServer:
    """Serves `files` (name -> bytes) at `url` + name.

    Args:
        files: the files, by name.
        content_length: per name, the Content-Length to declare instead of the real one.
        cut_after: the first answer stops after this many bytes (the connection drops), once.

    Attributes:
        hits: requests so far; ranges: each request's Range header (None without one);
        sent: the bytes of each answer's body.
    """

    def __init__(self, files: dict[str, bytes], content_length: dict[str, int] | None = None,
                 cut_after: int | None = None):
        self.files, self.content_length, self.cut_after = files, content_length or {}, cut_after
        self.hits, self.ranges, self.sent = 0, [], []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                name = self.path.lstrip("/")
                if name not in outer.files:
                    self.send_error(404)
                    return
                data = outer.files[name]
                header = self.headers.get("Range")
                outer.ranges.append(header)
                start = int(header.removeprefix("bytes=").split("-")[0]) if header else 0
                body = data[start:]
                self.send_response(206 if header else 200)
                if header:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(outer.content_length.get(name, len(body))))
                self.end_headers()
                if outer.cut_after is not None:  # the connection drops mid-way, once
                    body, outer.cut_after = body[:outer.cut_after], None
                outer.sent.append(len(body))
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
