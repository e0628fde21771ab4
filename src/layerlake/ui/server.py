"""``layerlake ui``: serve ``UiApp`` with Python's threaded HTTP server (standard library: nothing to
install, one thread per request, enough for one researcher's browser)."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from layerlake.core.duck import QueryLimits
from layerlake.core.errors import LayerlakeError
from layerlake.ui.app import POST_PATHS, Response, UiApp
from layerlake.ui.responses import json_response
from layerlake.warehouse.command import add_limit_arguments, add_root_argument

LOCAL = "127.0.0.1"
MAX_BODY = 4 << 20  # the longest POST body read: a long SQL statement, a few thousand run ids to compare
FORM = "application/x-www-form-urlencoded"
# Everything from this server only (no CDN can load); Vega compiles its expressions with eval.
CSP = "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:"


def handler_for(app: UiApp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "layerlake"

        def _answer(self, head_only: bool = False, body: str | None = None) -> None:
            parts = urlsplit(self.path)
            query = parts.query if body is None else body
            response = app.respond(self.command, parts.path, query, self.headers.items())
            self._reply(response, head_only)

        def _reply(self, response: Response, head_only: bool = False) -> None:
            try:
                self._send(response, head_only)
            except (BrokenPipeError, ConnectionResetError):
                return  # the browser left before the answer: nothing to tell anyone

        def _send(self, response: Response, head_only: bool) -> None:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", CSP)
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.end_headers()
            if not head_only:
                self.wfile.write(response.body)

        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            self._answer()

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(head_only=True)

        def do_POST(self) -> None:  # noqa: N802
            """A form POSTed to a reading endpoint (``POST_PATHS``: a statement too long for an address);
            the app answers the rest with 405, and checks the headers as for GET."""
            if urlsplit(self.path).path not in POST_PATHS:
                self._answer()
                return
            body = self._form_body()
            if body is not None:
                self._answer(body=body)

        def _form_body(self) -> str | None:
            """The request's form fields as text; None when refused (the refusal is sent)."""
            length = self.headers.get("Content-Length", "")
            kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            refusal = None
            if not (length.isascii() and length.isdigit()):
                refusal = 411, "a POST needs a Content-Length", "send the form as a browser does"
            elif int(length) > MAX_BODY:
                refusal = 413, f"the form is {int(length):,} bytes, more than {MAX_BODY:,}", "send less"
            elif kind != FORM:
                refusal = (
                    415,
                    f"a POST's body must be a form ({FORM}), not {kind or 'untyped'}",
                    "send a form",
                )
            if refusal is None:
                try:
                    return self.rfile.read(int(length)).decode("ascii")
                except UnicodeDecodeError:
                    refusal = 400, "the form holds bytes that are not percent-escaped", "percent-escape them"
            self.close_connection = True  # what is left of the body is not read
            self._reply(json_response({"error": refusal[1], "fix": refusal[2]}, refusal[0]))
            return None

        def _refuse(self) -> None:
            self._answer()  # the app answers 405 to every method that could write

        do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """http.server's own refusals (a request line over 64 KiB, a method without a ``do_``, a
            malformed request) as the app's answers: JSON with its headers, never an HTML page."""
            self.close_connection = True
            if self.request_version in ("HTTP/0.9", ""):  # a line it could not read: answer with headers
                self.request_version = "HTTP/1.0"
            self._reply(server_refusal(code, self.command, message), head_only=self.command == "HEAD")

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return  # quiet: the terminal shows the URL and errors only

    return Handler


def server_refusal(code: int, method: str | None, message: str | None) -> Response:
    """The JSON answer to a request that http.server refused before the app saw it."""
    if code == 414:
        error = "the request's address is longer than 64 KiB"
        fix = "send a long statement from the SQL console's form (it POSTs it), or fewer values"
    elif code == 501:  # no do_<METHOD>: as the app answers a method that could write
        return json_response(
            {"error": f"method {method!r} is not served: the UI is read-only", "fix": "use GET"}, 405
        ).with_headers({"Allow": "GET, HEAD", "Connection": "close"})
    else:
        error = f"the request was refused: {message or 'malformed'}"
        fix = "send a well-formed HTTP/1.1 request (a browser does)"
    return json_response({"error": error, "fix": fix}, code).with_headers({"Connection": "close"})


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: tuple) -> None:
        """One line, never a traceback (the app answers every request itself; this is the socket)."""
        error = sys.exc_info()[1]
        if not isinstance(error, (BrokenPipeError, ConnectionResetError)):
            print(f"layerlake ui: a request from {client_address[0]} failed: {error!r}", file=sys.stderr)


def make_server(app: UiApp, host: str = LOCAL, port: int = 0) -> ThreadingHTTPServer:
    """The server, bound (``port`` 0: a free port); ``server.server_address`` says where. The app then
    answers only requests addressed to that host and port (``ui.guard``)."""
    server = Server((host, port), handler_for(app))
    app.serve_at(host, server.server_address[1])
    return server


def ui_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerlake ui", description="Serve the warehouse read-only in a browser."
    )
    add_root_argument(parser)
    parser.add_argument(
        "--attach", action="append", default=[], help="another warehouse root or shared folder"
    )
    parser.add_argument(
        "--host", default=LOCAL, help=f"address to listen on (default {LOCAL}: this machine only)"
    )
    parser.add_argument(
        "--port", type=port_number, default=8765, help="port (default 8765; 0 = any free port)"
    )
    add_limit_arguments(parser)  # the SQL console's, as `layerlake sql`'s
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="compute nothing before a page asks (default: the pages' first data is computed on start)",
    )
    return parser


def port_number(text: str) -> int:
    """A TCP port, 0 to 65535 (0: any free one); argparse names the option and the value otherwise."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0 to 65535; 0 = any free port)")
    return port


def listen_fix(error: OSError, host: str) -> str:
    """What to do when the server cannot bind: another port when this one is taken or forbidden,
    another address when the host is none of this machine's."""
    import errno

    if error.errno in (errno.EADDRINUSE, errno.EACCES):
        return "choose another port with --port N (or --port 0 for any free one)"
    return (
        f"give --host an address of this machine ({LOCAL} for this machine only, 0.0.0.0 for all), not {host}"
    )


def _prepare(app: UiApp, warm: bool) -> None:
    try:
        app.vega_bundle()
        app.sandbox().prestart()  # the SQL console's first worker, so the first statement finds it ready
        if warm:
            app.warm()
    except LayerlakeError as error:  # the page that needs it will say what is wrong
        print(f"layerlake ui: {error.message}", file=sys.stderr)


def ui(argv: list[str]) -> int:
    """``layerlake ui [--root DIR] [--attach DIR ...] [--port N] [--host ADDR]``: serve until Ctrl-C."""
    from layerlake.warehouse.views import source_root

    args = ui_parser().parse_args(argv)
    started = time.perf_counter()
    limits = QueryLimits(args.timeout, args.memory_limit)
    limits.check()  # a wrong --timeout or --memory-limit fails here, not at the first console query
    attach = tuple(Path(a).expanduser().resolve() for a in args.attach)
    root = source_root(args.root, attach)  # None: attached folders and no local warehouse, served alone
    app = UiApp(root, attach, limits)
    app.warehouse.cursor().close()  # a warehouse or folder that cannot be read fails here, by name
    try:
        server = make_server(app, args.host, args.port)
    except OSError as error:
        raise LayerlakeError(
            f"cannot listen on {args.host}:{args.port}: {error.strerror or error}",
            fix=listen_fix(error, args.host),
        ) from error
    # in the background, in the order a browser asks: the Vega script, then the pages' first data
    threading.Thread(target=_prepare, args=(app, not args.no_warm_up), daemon=True).start()
    if args.host != LOCAL:
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine can read the warehouse",
            file=sys.stderr,
        )
    host, port = server.server_address[:2]
    served = root if root is not None else " + ".join(str(a) for a in attach)
    print(f"layerlake ui: serving {served} at http://{host}:{port}/ (ready in {time.perf_counter() - started:.1f} s; "
          "Ctrl-C stops)", flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.close()
    return 0
