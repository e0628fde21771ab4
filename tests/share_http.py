"""A real HTTP server on 127.0.0.1 for the share-by-URL tests and benchmark: serves a folder with byte
ranges, counts the bytes it sends, and can misbehave on demand.

``Server(folder)`` serves ``folder`` at ``server.url``; ``hub=True`` also answers the Hugging Face Hub's
file URLs (``/datasets/ORG/NAME/resolve/REVISION/PATH`` from ``folder/ORG/NAME/PATH``, with the
``X-Repo-Commit`` header, a revision other than ``main`` or the commit answering 404). Knobs, each a
plain attribute set while it runs: ``delay_s`` (seconds to wait before each answer's body), ``redirect``
(a URL prefix every request is redirected to, 302), ``fail_after`` (requests answered before the
server closes every further connection unanswered), ``trickle_s`` (send each answer's body one byte
every so many seconds; with ``trickle_head``, its status line and headers too). ``sent`` counts body
bytes, ``requests`` the requests, ``paths`` their paths. Use as a context manager: the server stops at
the end.
"""

from __future__ import annotations

import http.server
import re
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_HUB = re.compile(r"^/datasets/(?P<org>[^/]+)/(?P<name>[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


class Server:
    def __init__(self, folder: Path, hub: bool = False) -> None:
        self.folder, self.hub = Path(folder), hub
        self.delay_s = 0.0
        self.redirect: str | None = None
        self.fail_after: int | None = None
        self.trickle_s = 0.0
        self.trickle_head = False
        self.sent = 0
        self.requests = 0
        self.paths: list[str] = []  # the path of every request, in order
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.answer(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        with self.lock:
            self.sent = self.requests = 0
            self.paths = []
        self.delay_s, self.redirect, self.fail_after = 0.0, None, None
        self.trickle_s, self.trickle_head = 0.0, False

    def file(self, path: str) -> tuple[Path | None, dict[str, str]]:
        path = unquote(urlsplit(path).path)
        if self.hub:
            match = _HUB.match(path)
            if match is None or match["rev"] not in ("main", COMMIT):
                return None, {}
            found = self.folder / match["org"] / match["name"] / match["path"]
            return found, {"X-Repo-Commit": COMMIT}
        return self.folder / path.lstrip("/"), {}

    def answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.requests += 1
            count = self.requests
            self.paths.append(handler.path)
        if self.trickle_s and self.trickle_head and not isinstance(handler.wfile, Trickle):
            handler.wfile = Trickle(handler.wfile, self.trickle_s)  # from the status line on
        if self.fail_after is not None and count > self.fail_after:
            handler.close_connection = True  # the server is gone: the connection closes unanswered
            return
        if self.redirect is not None:
            handler.send_response(302)
            handler.send_header("Location", self.redirect + handler.path)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        path, extra = self.file(handler.path)
        if path is None or not path.is_file() or ".." in Path(handler.path).parts:
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        data = path.read_bytes()
        wanted = re.match(r"bytes=(\d+)-(\d*)$", handler.headers.get("Range", ""))
        if wanted:
            start = int(wanted[1])
            end = min(int(wanted[2]) + 1 if wanted[2] else len(data), len(data))
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            body = data[start:end]
        else:
            handler.send_response(200)
            body = data
        for key, value in extra.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if self.delay_s:
            time.sleep(self.delay_s)
        try:
            if self.trickle_s and not isinstance(handler.wfile, Trickle):
                Trickle(handler.wfile, self.trickle_s).write(body)
            else:
                handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            return
        with self.lock:
            self.sent += len(body)


class Trickle:
    """A connection's writing side sending one byte every ``seconds`` (a server that is up, but slow
    beyond any time limit on a single socket read)."""

    def __init__(self, out, seconds: float) -> None:
        self.out, self.seconds, self.gone = out, seconds, False

    def write(self, data: bytes) -> int:
        for i in range(len(data)):
            if self.gone:  # the client left: nothing more to send
                break
            try:
                self.out.write(data[i : i + 1])
                self.out.flush()
            except OSError:
                self.gone = True
                break
            time.sleep(self.seconds)
        return len(data)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.out.flush()
            except OSError:
                self.gone = True
