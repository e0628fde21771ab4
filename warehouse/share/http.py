"""Reading a shared dataset over HTTP(S): ranges of listed files, each checked against the manifest.

DuckDB's own HTTP reading (the ``httpfs`` extension) is downloaded at runtime and so is not available
offline or in a locked-down environment; DuckDB's Python API instead reads any path whose protocol an
fsspec filesystem registered on the connection claims. ``RemoteFileSystem`` is that filesystem, over the
standard library's ``http.client`` (no aiohttp, no requests): DuckDB asks for byte ranges (each file's
footer, then the column chunks a query needs) and this module fetches them with ``Range`` requests.

What it guarantees, whatever the server does:

- only files the verified manifest lists are read (any other path is refused), at URLs inside the
  dataset's folder on its own host;
- every response is checked before DuckDB sees a byte: the file's total size (``Content-Range``) must be
  the listed size, and every fetched *block* (``BLOCK_BYTES``; the export lists each block's sha256,
  ``block_digests``) must hash to the listed value; a file whose export lists no blocks is fetched whole
  and checked against its sha256. A file replaced on the server after the manifest is refused, named;
- redirects are followed only to the same host (scheme, host and port), or to hosts the caller allows
  (``allow_hosts``; the Hugging Face Hub's own file servers for ``hf://``);
- each request has a time limit (``timeout_s``) on the whole answer, not only on each socket read, so a
  server that sends a byte a second is stopped and named.

Blocks are the unit of fetching as well as of checking: a read is widened to the blocks it touches (at
most one block more on each side of what DuckDB asked for), and the checked blocks last used are kept
(``KEEP_BYTES``).
Parquet-shaped segments (one per column chunk) were tried first: DuckDB reads 4 KiB-aligned ranges that
spill into the neighbouring chunk, and widening to it fetched a whole 10 MB Gram chunk for a footer.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urljoin, urlsplit

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from layerlake.warehouse.errors import ShareError

DEFAULT_TIMEOUT_S = 60.0  # one request's whole answer; --http-timeout changes it
MAX_REDIRECTS = 5
CHUNK = 1 << 16  # bytes read from an answer at a time (every read from the socket is under the time limit)
BLOCK_BYTES = 64 << 10  # the unit of fetching and checking; DuckDB reads 4 KiB-aligned ranges of any size
DIGEST_HEX = 32  # hex digits of each block's sha256 the manifest lists (128 bits; 0.05 % of the data)
KEEP_BYTES = 64 << 20  # checked blocks kept in memory, for all files together (``KeptBlocks``)


class RemoteError(ShareError):
    """A shared dataset read by URL cannot be read, or what the server sent does not match its manifest."""


@dataclass(frozen=True)
class Expected:
    """What the manifest says of one file: it is checked on every response."""

    label: str  # the file's path in the dataset (named in errors)
    bytes: int
    sha256: str
    block_bytes: int = 0  # 0: no block hashes listed (the file is fetched and checked whole)
    digests: str = ""  # each block's sha256, first DIGEST_HEX hex digits, concatenated


@dataclass(frozen=True)
class HttpPolicy:
    """How requests are made: the time limit, hosts redirects may lead to, headers per host."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    allow_hosts: tuple[str, ...] = ()  # "host", "host:port", or ".suffix" for every host under it
    headers: tuple[tuple[str, str, str], ...] = ()  # (host, header, value): e.g. a Hub token for its host

    def allows(self, origin: tuple[str, str, int | None], url: str) -> bool:
        scheme, host, port = _origin(url)
        if (scheme, host, port) == origin:
            return True
        if scheme != "https" and origin[0] == "https":
            return False  # never downgraded to plain HTTP
        named = {host, f"{host}:{port}"}
        return any(h in named or (h.startswith(".") and host.endswith(h)) for h in self.allow_hosts)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    url: str  # after redirects


_LOCAL = threading.local()  # one keep-alive connection per (thread, origin)


class HttpClient:
    """GET with an optional byte range, redirects under ``policy``, the time limit on the whole answer."""

    def __init__(self, policy: HttpPolicy) -> None:
        self.policy = policy

    def get(self, url: str, start: int | None = None, end: int | None = None, what: str = "") -> Response:
        """The answer to GET ``url`` (bytes ``[start, end)`` when given); ``RemoteError`` on any failure."""
        origin, deadline, target = _origin(url), time.monotonic() + self.policy.timeout_s, url
        hops: dict[str, str] = {}  # headers of the redirects (the Hub's X-Repo-Commit comes with its first)
        for _ in range(MAX_REDIRECTS + 1):
            status, headers, body = self._once(target, start, end, deadline, what or url)
            headers = {**hops, **headers}
            if status in (301, 302, 303, 307, 308) and "location" in headers:
                hops = {k: v for k, v in headers.items() if k.startswith("x-")}
                following = urljoin(target, headers["location"])
                if not self.policy.allows(origin, following):
                    raise RemoteError(
                        f"{what or url}: the server redirects to {_origin(following)[1]} ({following.split('?')[0]}), "
                        f"another host than {origin[1]}; refused",
                        fix=f"if you trust that host, allow it with --allow-redirect {_origin(following)[1]}",
                    )
                target = following
                continue
            return Response(status, headers, body, target)
        raise RemoteError(f"{what or url}: more than {MAX_REDIRECTS} redirects", fix="check the URL")

    def _once(
        self, url: str, start: int | None, end: int | None, deadline: float, what: str
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(url)
        scheme, host, port = _origin(url)
        if scheme not in ("http", "https"):
            raise RemoteError(f"{what}: {url} is not an http(s) URL", fix="use http://, https:// or hf://")
        headers = {"Accept-Encoding": "identity", "User-Agent": "layerlake"}
        headers.update({k: v for h, k, v in self.policy.headers if h == host})
        if start is not None:
            headers["Range"] = f"bytes={start}-{end - 1}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        for attempt in (0, 1):  # a kept-alive connection the server closed meanwhile: once more, fresh
            con = self._connection(scheme, host, port, deadline, fresh=attempt == 1)
            con.response_class = _deadline_response(deadline)  # this request's answer, under its deadline
            try:
                con.request("GET", path, headers=headers)
                answer = con.getresponse()
                body = _read_all(answer, deadline, lambda: self._late(what, url))
                return answer.status, {k.lower(): v for k, v in answer.getheaders()}, body
            except TimeoutError:
                self._drop(scheme, host, port)
                raise self._late(what, url) from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as error:
                self._drop(scheme, host, port)
                if attempt == 1:
                    raise self._gone(what, url, error) from error
            except (OSError, http.client.HTTPException) as error:
                self._drop(scheme, host, port)
                raise self._gone(what, url, error) from error
        raise AssertionError("unreachable")

    def _late(self, what: str, url: str) -> RemoteError:
        return RemoteError(
            f"{what}: the server at {_origin(url)[1]} did not answer within the time limit of "
            f"{self.policy.timeout_s:g} s (--http-timeout); nothing was changed",
            fix="try again later, or give a longer --http-timeout",
        )

    def _gone(self, what: str, url: str, error: BaseException) -> RemoteError:
        return RemoteError(
            f"{what}: cannot read {url.split('?')[0]} ({type(error).__name__}: {error}); nothing was changed",
            fix="check that the server is up and the URL is right, then try again",
        )

    def _connection(
        self, scheme: str, host: str, port: int | None, deadline: float, fresh: bool
    ) -> http.client.HTTPConnection:
        pool = _LOCAL.__dict__.setdefault("pool", {})
        key = (scheme, host, port)
        if fresh or key not in pool:
            self._drop(*key)
            kind = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            pool[key] = kind(host, port, timeout=max(0.001, deadline - time.monotonic()))
        con = pool[key]
        con.timeout = max(0.001, deadline - time.monotonic())
        if con.sock is not None:
            con.sock.settimeout(con.timeout)
        return con

    @staticmethod
    def _drop(scheme: str, host: str, port: int | None) -> None:
        con = _LOCAL.__dict__.setdefault("pool", {}).pop((scheme, host, port), None)
        if con is not None:
            con.close()


def _read_all(answer: http.client.HTTPResponse, deadline: float, late: Callable[[], RemoteError]) -> bytes:
    parts = []
    while True:
        if time.monotonic() > deadline:
            raise late()
        block = answer.read(CHUNK)  # each read from the socket waits until the deadline at most
        if not block:
            return b"".join(parts)
        parts.append(block)


class _DeadlineReader(io.RawIOBase):
    """A socket's reading side under one deadline: each ``recv`` may wait only for the time left, and none
    starts after it. ``http.client`` reads a status line, headers and a body through a buffered reader
    that loops over ``recv`` until it has what it asked for (a line, a whole read's size); a socket
    timeout alone restarts at every byte received, so a server sending one byte a second would never
    be stopped."""

    def __init__(self, sock: Any, deadline: float) -> None:
        super().__init__()
        self._sock, self._deadline = sock, deadline
        self._raw = sock.makefile("rb", buffering=0)  # holds the socket open while the answer is read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the answer did not arrive within the time limit")
        self._sock.settimeout(left)
        return self._raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _DeadlineSocket:
    """What ``http.client.HTTPResponse`` reads an answer from: the socket under the request's deadline."""

    def __init__(self, sock: Any, deadline: float) -> None:
        self._sock, self._deadline = sock, deadline

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


def _deadline_response(deadline: float) -> Callable[..., http.client.HTTPResponse]:
    """An ``HTTPConnection.response_class`` whose answers are read under ``deadline`` (``_DeadlineReader``)."""

    def response(sock: Any, *args: Any, **kwargs: Any) -> http.client.HTTPResponse:
        return http.client.HTTPResponse(_DeadlineSocket(sock, deadline), *args, **kwargs)

    return response


def check_status(response: Response, what: str, partial: bool) -> None:
    """A 404 names the missing file; any other failure the status."""
    if response.status == 404:
        raise RemoteError(
            f"{what} is not on the server ({response.url.split('?')[0]}: 404 Not Found)",
            fix="check the URL (and the revision); a shared dataset holds manifest.json at its top",
        )
    if response.status in (401, 403):
        raise RemoteError(
            f"{what}: access refused ({response.status}) at {response.url.split('?')[0]}",
            fix="for a private Hub dataset, log in with `hf auth login` or set HF_TOKEN",
        )
    if response.status != (206 if partial else 200) and not (partial and response.status == 200):
        raise RemoteError(
            f"{what}: the server answered {response.status} at {response.url.split('?')[0]}",
            fix="check the URL; try again later if the server is busy",
        )


class KeptBlocks:
    """Checked blocks of every file, the least recently used dropped past ``max_bytes``. DuckDB opens a
    file more than once per query and reads ahead from several threads at once, in ranges that straddle
    two blocks: without this (and ``claim``, which lets one thread fetch a block while the others wait
    for it), most blocks were fetched twice (1.8x the bytes, measured)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._lock = threading.Lock()
        self._blocks: OrderedDict[tuple[str, int, str], bytes] = OrderedDict()
        self._pending: dict[tuple[str, int, str], threading.Event] = {}

    def claim(self, keys: list[tuple[str, int, str]]) -> tuple[dict[Any, bytes], list[Any], list[Any]]:
        """``(kept, mine, theirs)``: blocks at hand, blocks the caller must fetch (then ``done``), and
        blocks another thread is fetching (``wait`` for them)."""
        kept, mine, theirs = {}, [], []
        with self._lock:
            for key in keys:
                if key in self._blocks:
                    self._blocks.move_to_end(key)
                    kept[key] = self._blocks[key]
                elif key in self._pending:
                    theirs.append(key)
                else:
                    self._pending[key] = threading.Event()
                    mine.append(key)
        return kept, mine, theirs

    def done(self, key: tuple[str, int, str], piece: bytes | None) -> None:
        """A claimed block fetched and checked (None: its fetch failed; a waiting thread fetches it)."""
        with self._lock:
            if piece is not None and key not in self._blocks:
                self._blocks[key] = piece
                self.bytes += len(piece)
                while self.bytes > self.max_bytes:
                    self.bytes -= len(self._blocks.popitem(last=False)[1])
            event = self._pending.pop(key, None)
        if event is not None:
            event.set()

    def clear(self) -> None:
        """Forget every kept block (a measurement of what a cold query fetches starts here)."""
        with self._lock:
            self._blocks.clear()
            self.bytes = 0

    def wait(self, key: tuple[str, int, str], timeout_s: float) -> bytes | None:
        with self._lock:
            event = self._pending.get(key)
        if event is not None:
            event.wait(timeout_s)
        with self._lock:
            return self._blocks.get(key)


KEPT = KeptBlocks(KEEP_BYTES)


class RemoteFiles:
    """The files a process may read by URL, with what their manifest says (filled when a dataset is
    attached, read by ``RemoteFileSystem``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, tuple[Expected, HttpClient]] = {}

    def add(self, url: str, expected: Expected, client: HttpClient) -> None:
        with self._lock:
            self._files[url] = (expected, client)

    def get(self, url: str) -> tuple[Expected, HttpClient]:
        with self._lock:
            found = self._files.get(url)
        if found is None:
            raise RemoteError(
                f"{url} is not a file of an attached shared dataset; refused",
                fix="attach the dataset's folder URL (its manifest lists what may be read)",
            )
        return found


FILES = RemoteFiles()


class RemoteFileSystem(AbstractFileSystem):
    """What DuckDB reads ``http(s)://`` paths through: listed files only, every block checked."""

    protocol = ("http", "https")
    cachable = False  # one per connection; the files it may read are ``FILES``

    def _strip_protocol(self, path: str) -> str:  # keep the whole URL: it names the file
        return path if isinstance(path, str) else str(path)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        expected, _ = FILES.get(path)
        return {"name": path, "size": expected.bytes, "type": "file"}

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        return [self.info(path)] if detail else [path]

    def modified(self, path: str) -> datetime:
        FILES.get(path)
        return datetime(2000, 1, 1, tzinfo=timezone.utc)  # shared files never change: the manifest says

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> RemoteFile:
        if mode != "rb":
            raise RemoteError(f"{path}: a shared dataset is read-only", fix="read it; export to change it")
        expected, client = FILES.get(path)
        return RemoteFile(self, path, expected, client)


class RemoteFile(AbstractBufferedFile):
    """One listed file: reads widened to whole blocks, each checked against the manifest."""

    def __init__(
        self, fs: RemoteFileSystem, url: str, expected: Expected, client: HttpClient, keep: bool = True
    ) -> None:
        self.expected, self.client = expected, client
        self.keep = keep  # False: a file read once, whole (an import's download), leaves nothing behind
        super().__init__(fs, url, "rb", block_size=1 << 20, cache_type="none", size=expected.bytes)

    def _fetch_range(self, start: int, end: int) -> bytes:
        end = min(end, self.expected.bytes)
        if start >= end:
            return b""
        step = self.expected.block_bytes or self.expected.bytes  # no blocks listed: the file is one
        first, last = start // step, (end - 1) // step
        wanted = list(range(first, last + 1))
        if not self.keep:
            found = dict(zip(wanted, self._fetch_blocks(wanted, step), strict=True))
        else:
            found = self._kept_blocks(wanted, step)
        out = b"".join(found[i] for i in wanted)
        return out[start - first * step : end - first * step]

    def _kept_blocks(self, wanted: list[int], step: int) -> dict[int, bytes]:
        """The blocks ``wanted``: kept ones, fetched ones (each run of consecutive blocks in one request),
        and ones another thread was fetching."""
        kept, mine, theirs = KEPT.claim([self._key(i) for i in wanted])
        found = {key[1]: piece for key, piece in kept.items()}
        try:
            for run in _runs(sorted(key[1] for key in mine)):
                for i, piece in zip(run, self._fetch_blocks(run, step), strict=True):
                    found[i] = piece
                    KEPT.done(self._key(i), piece)
        finally:
            for key in mine:
                if key[1] not in found:
                    KEPT.done(key, None)
        for key in theirs:
            piece = KEPT.wait(key, self.client.policy.timeout_s)
            found[key[1]] = piece if piece is not None else self._fetch_blocks([key[1]], step)[0]
        return found

    def _fetch_blocks(self, run: list[int], step: int) -> list[bytes]:
        """Consecutive blocks ``run``, fetched in one request, each checked."""
        lo, hi = run[0] * step, min((run[-1] + 1) * step, self.expected.bytes)
        data = self.fetch(lo, hi)
        pieces = [data[i * step - lo : (i + 1) * step - lo] for i in run]
        for i, piece in zip(run, pieces, strict=True):
            self.check_block(i, piece)
        return pieces

    def _key(self, i: int) -> tuple[str, int, str]:  # a block is kept under what the manifest says of it
        listed = self.expected.digests[i * DIGEST_HEX : (i + 1) * DIGEST_HEX]
        return self.path, i, listed or self.expected.sha256

    def fetch(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the file, from a server whose copy has the listed size."""
        what = f"shared file {self.expected.label}"
        whole = start == 0 and end == self.expected.bytes
        response = self.client.get(self.path, None if whole else start, None if whole else end, what)
        check_status(response, what, partial=not whole)
        total = _total_size(response)
        if total is not None and total != self.expected.bytes:
            raise changed(
                self.expected, f"it is {total} bytes there, the manifest lists {self.expected.bytes}"
            )
        body = response.body
        if response.status == 200 and not whole:  # a server that ignores ranges sends the whole file
            body = body[start:end]
        if len(body) != end - start:
            raise RemoteError(
                f"{what}: the server sent {len(body)} bytes for a range of {end - start}; nothing was changed",
                fix="try again; if it persists, the server does not serve byte ranges correctly",
            )
        return body

    def check_block(self, i: int, piece: bytes) -> None:
        digest = hashlib.sha256(piece).hexdigest()
        if self.expected.block_bytes:
            listed = self.expected.digests[i * DIGEST_HEX : (i + 1) * DIGEST_HEX]
            if digest[:DIGEST_HEX] != listed:
                start = i * self.expected.block_bytes
                raise changed(
                    self.expected, f"bytes {start}-{start + len(piece) - 1} differ from the manifest's sha256"
                )
        elif digest != self.expected.sha256:
            raise changed(self.expected, "its sha256 differs from the manifest")


def _total_size(response: Response) -> int | None:
    if response.status == 206:
        text = response.headers.get("content-range", "")
        tail = text.rpartition("/")[2]
        return int(tail) if tail.isdigit() else None
    return len(response.body)


def changed(expected: Expected, how: str) -> RemoteError:
    return RemoteError(
        f"shared file {expected.label} changed on the server after its manifest was written ({how}); "
        "refused, nothing was changed",
        fix="ask the dataset's author to export it again (or publish the whole folder again); a server must "
        "serve the files the manifest lists unchanged",
    )


def block_digests(path: Any, block_bytes: int = BLOCK_BYTES) -> dict[str, Any]:
    """``{"block_bytes": B, "block_sha256": "..."}`` of a local file: the first ``DIGEST_HEX`` hex digits
    of the sha256 of each ``B``-byte block, concatenated, so a reader by URL checks each range it fetches
    (``RemoteFile``) without reading the whole file."""
    digests = []
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_bytes), b""):
            digests.append(hashlib.sha256(block).hexdigest()[:DIGEST_HEX])
    return {"block_bytes": block_bytes, "block_sha256": "".join(digests)}


def from_duckdb(error: BaseException) -> RemoteError | None:
    """The ``RemoteError`` behind a DuckDB error raised while DuckDB read through ``RemoteFileSystem``
    (DuckDB reports a filesystem's exception as its Python traceback, as text), or None."""
    text, marker = str(error), "RemoteError: "
    if marker not in text:
        return None
    message, _, fix = text[text.rindex(marker) + len(marker) :].partition("\n  fix: ")
    return RemoteError(message.strip(), fix=fix.strip() or None)


def _runs(blocks: list[int]) -> list[list[int]]:
    """``[3, 4, 7]`` -> ``[[3, 4], [7]]``."""
    runs: list[list[int]] = []
    for i in blocks:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs
