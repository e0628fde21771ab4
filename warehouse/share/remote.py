"""Shared datasets by URL: ``http://``, ``https://`` and ``hf://datasets/ORG/NAME[@revision][/folder]``.

- ``is_url(value)``: whether an attach or import argument names a dataset by URL;
- ``RemoteSource``: such a URL with how to fetch it (time limit, hosts redirects may lead to), plain data
  so that a query's worker process (``warehouse.sandbox``) opens it the same way;
- ``open_dataset(source)``: ``manifest.json`` fetched and verified as a folder's is (format, schema
  version, every task and shard path: ``warehouse.share.verify``), each listed file registered with
  ``warehouse.share.http.FILES`` at a URL inside the dataset's folder, on its host;
- ``remote_files(source)``: the files ``warehouse.connect(attach=[URL])`` serves, read through
  ``RemoteFileSystem`` (``warehouse.share.http``: only listed files, every fetched block checked);
- ``verify_remote(source, checksums)``: what ``share attach URL`` checks first (``--verify``: every file
  fetched whole and its sha256 compared);
- ``download(source, root, folder)``: what ``share import URL`` needs, into a local folder laid out as an
  export: the files the warehouse at ``root`` does not hold already are downloaded (sha256 checked), the
  others linked from the warehouse; the import then verifies that folder as any other.

``hf://`` is read over the Hub's plain file URLs (``{endpoint}/datasets/ORG/NAME/resolve/{revision}/path``,
the ones ``huggingface_hub`` downloads from), with ``$HF_ENDPOINT`` and the user's token, through the same
filesystem as ``https://``: the revision is pinned to the commit the manifest came from
(``X-Repo-Commit``), so a push to the dataset while a query runs cannot mix two versions.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from layerlake.warehouse.errors import ShareError
from layerlake.warehouse.manifest import CommitEntry, FileEntry
from layerlake.warehouse.share.http import (
    DEFAULT_TIMEOUT_S,
    DIGEST_HEX,
    FILES,
    Expected,
    HttpClient,
    HttpPolicy,
    RemoteError,
    RemoteFile,
    RemoteFileSystem,
    changed,
    check_status,
)
from layerlake.warehouse.share.layout import MANIFEST_JSON
from layerlake.warehouse.share.verify import (
    Problem,
    dataset_id_problems,
    listed_files,
    manifest_entries,
    parse_manifest,
    verify_error,
)

SCHEMES = ("http://", "https://", "hf://")
HUB = "https://huggingface.co"
HUB_FILE_HOSTS = (".hf.co", ".huggingface.co")  # where the Hub redirects a large file's resolve URL
DOWNLOAD_PIECE = 8 << 20  # bytes fetched per request while downloading a file for an import


def is_url(value: Any) -> bool:
    """Whether ``value`` names a shared dataset by URL (a ``RemoteSource``, or a string with a scheme)."""
    return isinstance(value, RemoteSource) or (isinstance(value, str) and value.startswith(SCHEMES))


@dataclass(frozen=True)
class RemoteSource:
    """A shared dataset's URL and how to fetch it."""

    url: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    allow_hosts: tuple[str, ...] = ()  # hosts redirects may lead to, besides the dataset's own

    def __str__(self) -> str:
        return self.url


def as_source(value: Any, timeout_s: float | None = None, allow_hosts: tuple[str, ...] = ()) -> RemoteSource:
    """``value`` (a URL string or a ``RemoteSource``) as a ``RemoteSource``."""
    if isinstance(value, RemoteSource):
        return value
    return RemoteSource(
        str(value).rstrip("/"), DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s, tuple(allow_hosts)
    )


@dataclass
class RemoteDataset:
    """A shared dataset by URL whose manifest verified: where its files are and what they must be."""

    source: RemoteSource
    base: str  # the folder's http(s) URL, ending in "/" (for hf://, at the pinned commit)
    client: HttpClient
    manifest: dict[str, Any]
    manifest_text: bytes
    entries: list[CommitEntry]

    def file_url(self, path: str) -> str:
        """The URL of a listed file: inside the folder (the shard path rule allows no ``..``, no scheme,
        no host, no ``%``; checked again here, on the joined URL)."""
        url = self.base + quote(path, safe="/=+-._")
        if not url.startswith(self.base) or ".." in path.split("/") or "//" in path or "\\" in path:
            raise RemoteError(f"{path} leaves the dataset's folder", fix="ask its author to export it again")
        return url

    def expected(self, f: FileEntry) -> Expected:
        listed = self._blocks().get(f.path, {})
        block, digests = listed.get("block_bytes", 0), listed.get("block_sha256", "")
        if not (
            type(block) is int
            and block > 0
            and isinstance(digests, str)
            and len(digests) == DIGEST_HEX * -(-f.bytes // block)
        ):
            block, digests = 0, ""  # listed badly or not at all: the file is fetched whole, checked by sha256
        return Expected(f.path, f.bytes, f.sha256, block, digests)

    def _blocks(self) -> dict[str, dict[str, Any]]:
        return {f.get("path"): f for f in self.manifest.get("files", []) if isinstance(f, dict)}


def endpoint() -> str:
    """The Hub's address: ``$HF_ENDPOINT`` as set now, else the public Hub."""
    return (os.environ.get("HF_ENDPOINT") or HUB).rstrip("/")


def hub_token() -> str | None:
    """The user's Hub token (``$HF_TOKEN``, else what ``hf auth login`` stored), if any."""
    token = os.environ.get("HF_TOKEN")
    if token:
        return token
    try:
        from huggingface_hub import get_token
    except ImportError:
        return None
    return get_token()


def locate(source: RemoteSource) -> tuple[str, HttpPolicy, bool]:
    """``(base URL ending in "/", policy, is_hub)`` of a dataset URL; a ``ShareError`` for a malformed one."""
    url = source.url
    if url.startswith("hf://"):
        rest = url[len("hf://") :]
        parts = rest.split("/")
        if len(parts) < 3 or parts[0] != "datasets" or not parts[1] or not parts[2]:
            raise ShareError(
                f"{url} is not a Hub dataset URL", fix="write hf://datasets/ORG/NAME[@revision][/folder]"
            )
        name, _, revision = parts[2].partition("@")
        sub = parts[3:]
        if revision in ("refs",) and len(sub) >= 2 and sub[0] in ("pr", "convert"):
            revision, sub = "/".join([revision, *sub[:2]]), sub[2:]  # @refs/pr/1, as HfFileSystem reads it
        revision = unquote(revision) or "main"
        folder = "/".join(p for p in sub if p)
        hub = endpoint()
        base = f"{hub}/datasets/{parts[1]}/{name}/resolve/{quote(revision, safe='')}/" + (
            f"{folder}/" if folder else ""
        )
        host = (urlsplit(hub).hostname or "").lower()
        token = hub_token()
        headers = ((host, "Authorization", f"Bearer {token}"),) if token else ()
        allow = source.allow_hosts + (HUB_FILE_HOSTS if hub == HUB else ())
        return base, HttpPolicy(source.timeout_s, allow, headers), True
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ShareError(
            f"{url} is not an http(s) URL of a folder", fix="write http(s)://HOST/PATH/TO/EXPORT"
        )
    if parts.query or parts.fragment:
        raise ShareError(f"{url} has a query or fragment", fix="give the export folder's URL alone")
    return url.rstrip("/") + "/", HttpPolicy(source.timeout_s, source.allow_hosts), False


def open_dataset(source: RemoteSource) -> RemoteDataset:
    """Fetch and verify the manifest of the dataset at ``source``; register its files (see module doc)."""
    base, policy, hub = locate(source)
    client = HttpClient(policy)
    where = source.url + "/" + MANIFEST_JSON
    response = client.get(base + MANIFEST_JSON, what=where)
    if response.status == 404:
        raise ShareError(
            f"{where} is not on the server: {source.url} is not a layerlake shared dataset (404)",
            fix="check the URL (and the revision); `layerlake share export` writes manifest.json at the top",
        )
    check_status(response, where, partial=False)
    commit = response.headers.get("x-repo-commit", "")
    if hub and len(commit) == 40 and all(c in "0123456789abcdef" for c in commit):
        base = base.replace(
            "/resolve/" + base.split("/resolve/")[1].split("/")[0] + "/", f"/resolve/{commit}/", 1
        )
    try:
        text = response.body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ShareError(f"{where} is not UTF-8 JSON ({error})", fix="check the URL") from error
    manifest = parse_manifest(text, where, source.url)
    entries, problems = manifest_entries(manifest, source.url)
    problems += listed_files(entries)[1]  # how tasks share files (a compacted warehouse's merged files)
    problems += dataset_id_problems(manifest)
    dataset = RemoteDataset(source, base, client, manifest, response.body, entries)
    for entry in entries:
        for f in entry.files:
            try:
                FILES.add(dataset.file_url(f.path), dataset.expected(f), client)
            except RemoteError as error:
                problems.append(Problem(f.path, error.message, error.fix or ""))
    if problems:
        raise verify_error(source.url, problems)
    return dataset


def remote_files(source: Any) -> list[tuple[str, str, str, CommitEntry, FileEntry]]:
    """``(table, file URL, dataset URL, entry, file)`` for every file of the dataset at ``source``: what
    ``warehouse.views`` serves as its ``Shard``s."""
    from layerlake.warehouse import schema

    dataset = open_dataset(as_source(source))
    return [
        (f.table, dataset.file_url(f.path), dataset.source.url, e, f)
        for e in dataset.entries
        for f in e.files
        if f.table in schema.TABLES
    ]


def filesystem() -> RemoteFileSystem:
    """The fsspec filesystem a DuckDB connection reads ``http(s)://`` shard paths through."""
    return RemoteFileSystem(skip_instance_cache=True)


def verify_remote(source: Any, checksums: bool = False) -> RemoteSource:
    """``source`` once its manifest verified (and, with ``checksums``, every file fetched whole and its
    size and sha256 compared: every byte is read)."""
    source = as_source(source)
    dataset = open_dataset(source)
    if checksums:
        for entry in dataset.entries:
            for f in entry.files:
                _fetch_whole(dataset, f, None)
    return source


def _fetch_whole(dataset: RemoteDataset, f: FileEntry, sink: Any) -> None:
    """Read a listed file whole, piece by piece (each block checked), into ``sink`` (None: nowhere);
    its sha256 must be the listed one."""
    import hashlib

    expected = dataset.expected(f)
    reader = RemoteFile(filesystem(), dataset.file_url(f.path), expected, dataset.client, keep=False)
    digest = hashlib.sha256()
    step = (
        DOWNLOAD_PIECE
        if not expected.block_bytes
        else max(expected.block_bytes, DOWNLOAD_PIECE // expected.block_bytes * expected.block_bytes)
    )
    for start in range(0, f.bytes, step):
        piece = reader._fetch_range(start, min(start + step, f.bytes))
        digest.update(piece)
        if sink is not None:
            sink.write(piece)
    if digest.hexdigest() != f.sha256:
        raise changed(expected, "its sha256 differs from the manifest")


def download(source: Any, root: Path | None, folder: Path) -> int:
    """Lay the dataset at ``source`` out in the empty local ``folder`` for an import into the warehouse
    at ``root``: ``manifest.json``, and each listed file either linked (or copied) from the warehouse,
    when it holds that very file intact, or downloaded and checked. Returns the bytes downloaded."""
    from layerlake.warehouse.manifest import file_problem, latest, manifest_path, read_entries

    dataset = open_dataset(as_source(source))
    local: dict[str, str] = {}
    if root is not None and manifest_path(root).is_file():
        for entry in latest(read_entries(manifest_path(root)))[0].values():
            for f in entry.files:
                local[f.path] = f.sha256
    fetched = 0
    for entry in dataset.entries:
        for f in entry.files:
            target = folder / f.path
            if target.exists():  # a file listed by several tasks (a compacted export) comes once
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if root is not None and local.get(f.path) == f.sha256 and file_problem(root, f) is None:
                _link(root / f.path, target)
                continue
            with open(target, "xb") as sink:
                _fetch_whole(dataset, f, sink)
            fetched += f.bytes
    (folder / MANIFEST_JSON).write_bytes(dataset.manifest_text)
    return fetched


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system: a copy
        shutil.copyfile(src, dst)


def add_remote_arguments(parser: Any) -> None:
    """``--http-timeout`` and ``--allow-redirect``: how a dataset given by URL is fetched."""
    parser.add_argument(
        "--http-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
        help=f"time limit of each request to a dataset given by URL (default {DEFAULT_TIMEOUT_S:g})",
    )  # fmt: skip
    parser.add_argument(
        "--allow-redirect", action="append", default=[], metavar="HOST",
        help="a host a dataset's server may redirect to (default: its own host only; hf:// allows the Hub's)",
    )  # fmt: skip


def given_sources(values: list[Any], args: Any) -> list[Any]:
    """Attach or import arguments with each URL made a ``RemoteSource`` under the command's options."""
    if not math.isfinite(args.http_timeout) or args.http_timeout <= 0:
        raise ShareError(
            f"--http-timeout {args.http_timeout:g} is not a time limit",
            fix="give a time limit in seconds > 0",
        )
    for value in values:
        check_scheme(value)
    return [as_source(v, args.http_timeout, tuple(args.allow_redirect)) if is_url(v) else v for v in values]


_ANY_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def check_scheme(value: Any) -> None:
    """A value that looks like a URL has one of ``SCHEMES`` (an ``ftp://`` URL was read as a folder
    ``ftp:/...`` under the working directory, said not to exist)."""
    if isinstance(value, str) and _ANY_URL.match(value) and not is_url(value):
        scheme = value.split("://", 1)[0]
        raise ShareError(
            f"{value}: the URL scheme {scheme}:// is not supported",
            fix=f"give a dataset URL starting with {', '.join(SCHEMES)} (hf://datasets/ORG/NAME), or a local folder",
        )
