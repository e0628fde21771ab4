"""A user's SQL statement runs in a worker process, under a time and a memory limit that hold for every
statement: ``layerlake sql``, the UI's SQL console and ``share attach --sql`` all run theirs here.

Why a process. DuckDB's own limits do not hold for every statement: its interrupt is checked between
chunks of work, so one long function call runs past any time limit (a Python function such as
``ww_alpha``'s fit over 60,000 values ran 22 s against a 3 s limit, ``repeat('x', 1e9)`` 30 s, a
100M-element ``list_sort`` 27 s); and its ``memory_limit`` covers its buffer manager, not Python
functions, Arrow results or some operators (peaks of 4.0 and 7.2 GB under a 1 GB limit). A process can
be killed at any instruction, and the kernel bounds its memory:

- time: the parent waits for each message of the answer only until the deadline, then kills the worker
  (SIGKILL) and raises the time-limit error;
- memory: the worker's data segment (``RLIMIT_DATA``: heap and private mappings, so DuckDB, Arrow,
  numpy and Python alike) may grow by at most the memory limit over what it held once started, and
  DuckDB's own ``memory_limit`` is set to it too. An allocation past it fails inside the query (DuckDB's
  ``OutOfMemoryException``, Python's ``MemoryError``), which ends the query with the memory-limit error;
  the worker then exits, and a worker that died any other way is reported as having done so.

What it costs: a worker is forked ready (the CLI forks itself before it opens any DuckDB database, ~30 ms;
the UI, whose threads hold connections, forks from a ``forkserver`` that has imported the warehouse once,
~50 ms), opens the warehouse's views (as ``connect()`` does), and then serves statement after statement:
the UI keeps its workers (``max_workers``, 2 by default) and their open views between statements, so a
console query pays a pipe and Arrow's IPC encoding, not a process. A worker that was killed or hit its
memory limit is replaced by a new one on the next statement.

The answer streams back as Arrow IPC messages, one batch of ``BATCH_ROWS`` rows at a time, so neither
side holds more than a batch (the parent's reader decides what it keeps). The worker spills to disk (a
sort larger than memory) into a private temporary folder, removed with the sandbox, never into the
working directory.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from layerlake.core.duck import (
    STORED_FILE_FIX,
    QueryLimits,
    memory_error,
    read_only_statement,
    reads_a_damaged_file,
    set_memory_limit,
    time_error,
)
from layerlake.core.errors import LayerlakeError, SqlError
from layerlake.core.render import unique_names
from layerlake.warehouse.clip import Clip, Clipper
from layerlake.warehouse.errors import QueryError
from layerlake.warehouse.share.http import from_duckdb
from layerlake.warehouse.share.remote import is_url

BATCH_ROWS = 65_536  # rows per Arrow batch while a result streams
# the first byte of each message from a worker: the statement started (the views are open), its schema,
# a batch, its end, its failure
STARTED, SCHEMA, BATCH, END, FAILED = b"R", b"S", b"B", b"E", b"X"
STARTUP_S = 300.0  # how long a worker may take to open the views before its statement's clock starts
QUERY_FIX = "see the views and columns with `layerlake sql --schema`"
NO_RLIMIT = 1 << 60  # a memory limit above this ("none", "-1": DuckDB's unlimited) sets no kernel bound
PARENT_CHECK_S = 1.0  # how often a worker checks that the process it serves is still there


@dataclass(frozen=True)
class Source:
    """What a worker serves: a warehouse root (None: the attached folders alone) and attached folders."""

    root: Path | None
    attach: tuple[Any, ...] = ()  # folders (Path), or datasets by URL (``share.remote.RemoteSource``)


@dataclass(frozen=True)
class Setup:
    """How each worker runs: its limits, where it may spill, whether DuckDB draws its progress bar."""

    limits: QueryLimits
    memory_bytes: int  # limits.memory_bytes(), read once by the parent
    spill_dir: str
    progress: bool


def as_query_error(error: SqlError) -> QueryError:
    return error if isinstance(error, QueryError) else QueryError(error.message, fix=error.fix)


def check_statement(sql: str, what: str) -> None:
    """``read_only_statement`` with its refusal as a ``QueryError``."""
    try:
        read_only_statement(sql, what)
    except SqlError as error:
        raise as_query_error(error) from error


class Sandbox:
    """Worker processes that run users' statements under ``limits``; ``query()`` one at a time per worker.

    ``start="fork"`` forks this process (only while it has opened no DuckDB database and runs no other
    thread that holds a lock: the ``layerlake sql`` command); ``"forkserver"`` (default) forks from a
    clean server process, safe from a threaded server. Close it (or use ``with``) to stop the workers."""

    def __init__(
        self,
        root: Path | None,
        attach: tuple[Any, ...] = (),
        limits: QueryLimits | None = None,
        *,
        start: str = "forkserver",
        max_workers: int = 2,
        progress: bool = False,
    ) -> None:
        self.limits = limits or QueryLimits()
        try:
            self.limits.check()
        except SqlError as error:
            raise as_query_error(error) from error
        absolute = [
            p if is_url(p) else Path(p).expanduser().resolve() for p in (root, *attach) if p is not None
        ]
        # absolute: a worker works in its spill folder, where a relative path would name nothing
        self.source = Source(absolute[0] if root is not None else None, tuple(absolute[root is not None :]))
        self._context = multiprocessing.get_context(start)
        if start == "forkserver":  # the server imports DuckDB, Arrow and the views once, for every worker
            self._context.set_forkserver_preload([__name__])
            start_forkserver_deaf_to_ctrl_c()
        self._spill = Path(tempfile.mkdtemp(prefix="layerlake-sql-"))
        self._setup = Setup(self.limits, self.limits.memory_bytes(), str(self._spill), progress)
        self._slots = threading.BoundedSemaphore(max_workers)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._closed = False
        self.last_memory: dict[str, int] | None = None  # the last statement's ``Result.memory``

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker (one still answering too) and remove the spill folder."""
        with self._lock:
            self._closed = True
            workers, self._idle = [*self._idle, *self._busy], []
        for worker in workers:
            worker.stop()
        shutil.rmtree(self._spill, ignore_errors=True)

    def prestart(self) -> None:
        """Start one worker now (the UI does, in the background), so the first statement finds it ready."""
        with self._lock:
            if self._closed or self._idle:
                return
        worker = _Worker(self._context, self.source, self._setup)
        with self._lock:
            keep = not self._closed
            if keep:
                self._idle.append(worker)
        if not keep:
            worker.stop()

    @contextmanager
    def query(
        self,
        sql: str,
        variables: dict[str, Any] | None = None,
        what: str = "`layerlake sql`",
        clip: Clip | None = None,
    ) -> Iterator[Result]:
        """The answer of the read-only statement ``sql`` (staging ``variables`` set for it) as a
        ``Result`` to iterate batch by batch; ``QueryError`` when it is refused, fails or passes a limit
        (``what`` names the statement's origin in a refusal). The time limit counts from when a worker
        with open views starts the statement. Leaving the block before the end of the answer stops the
        worker (it is not reused). ``clip``: only one page of the answer, cut by the worker (``clip``
        module); ``Result.clip`` then says what was cut, and how many rows the answer has."""
        forking = self._context.get_start_method() == "fork"
        if not forking:
            check_statement(sql, what)  # refused here, before a worker is taken
        timeout = self.limits.timeout_s or None
        if not self._slots.acquire(timeout=timeout):
            raise as_query_error(time_error(self.limits))  # every worker busy for the whole time limit
        worker = result = None
        try:
            worker = self._take()  # forked before this process opens the parsing connection (its threads)
            if forking:
                try:
                    check_statement(sql, what)
                except QueryError:
                    self._give_back(worker, reusable=worker.alive)  # it ran nothing: keep it for the next
                    worker = None
                    raise
            result = Result(worker, self.limits)
            worker.send((sql, dict(variables or {}), what, clip))
            result.open()
            yield result
        finally:
            if result is not None:
                self.last_memory = result.memory
            if worker is not None:
                ended = result is not None and result.ended
                self._give_back(worker, reusable=ended and worker.alive)
            self._slots.release()

    def _take(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise QueryError("the query service has stopped", fix="start the command again")
            while self._idle:
                worker = self._idle.pop()
                if worker.alive:
                    self._busy.add(worker)
                    return worker
                worker.stop()
        worker = _Worker(self._context, self.source, self._setup)
        with self._lock:
            self._busy.add(worker)
        return worker

    def _give_back(self, worker: _Worker, reusable: bool) -> None:
        with self._lock:
            self._busy.discard(worker)
            if reusable and not self._closed:
                self._idle.append(worker)
                return
        worker.stop()


class Result:
    """One statement's answer: ``schema``, then its batches as they come (``for batch in result``);
    ``memory``: the worker's resident memory in bytes when its bound was set (``base_rss``) and at its
    peak (``peak_rss``), known once the answer ended or failed."""

    def __init__(self, worker: _Worker, limits: QueryLimits) -> None:
        self._worker, self._limits = worker, limits
        self._deadline: float | None = time.monotonic() + STARTUP_S
        self.schema: pa.Schema | None = None
        self.ended = False
        self.memory: dict[str, int] | None = None
        self.note: str | None = None  # what the reader should know of the views (tasks left out)
        self.clip: dict[str, Any] | None = None  # with a Clip: ``Clipper.summary()``, once ended

    def open(self) -> None:
        """Wait for the worker to start the statement (its views open), then for the answer's schema
        (or its error) within the time limit."""
        tag, _ = self._next(starting=True)
        if tag != STARTED:
            raise QueryError(f"the query's worker answered {tag!r} first", fix="run the query again")
        timeout = self._limits.timeout_s
        self._deadline = time.monotonic() + timeout if timeout else None
        tag, payload = self._next()
        if tag != SCHEMA:
            raise QueryError(f"the query's worker answered {tag!r} first", fix="run the query again")
        self.schema = pa.ipc.read_schema(pa.py_buffer(payload))

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while not self.ended:
            tag, payload = self._next()
            if tag == BATCH:
                yield pa.ipc.read_record_batch(pa.py_buffer(payload), self.schema)
            elif tag == END:
                self.ended = True
                end = json.loads(bytes(payload))
                self.memory, self.note, self.clip = end["memory"], end.get("note"), end.get("clip")
            else:
                raise QueryError(f"the query's worker answered {tag!r} mid-stream", fix="run the query again")

    def read_all(self) -> pa.Table:
        return pa.Table.from_batches(list(self), self.schema)

    def _next(self, starting: bool = False) -> tuple[bytes, memoryview]:
        """The worker's next message, waiting at most until the deadline: past it, or when the worker
        is gone, it is killed and the matching error raised."""
        worker = self._worker
        try:
            # past the deadline nothing more is read, even while batches keep coming (a result streamed
            # into a file arrives faster than it is written: polling alone would never time out)
            late = self._deadline is not None and time.monotonic() >= self._deadline
            ready = not late and _wait(worker.conn, self._deadline)
            data = worker.conn.recv_bytes() if ready else None
        except (EOFError, OSError):
            data = b""
        if data is None:
            worker.stop()
            if starting:
                raise QueryError(
                    f"the query's worker did not open the warehouse's views within {STARTUP_S:g} s",
                    fix="run `layerlake check` on the warehouse, then the query again",
                )
            raise as_query_error(time_error(self._limits))
        if not data:  # the worker died without a word: a signal, or memory it could not even report
            code = worker.stop()
            raise as_query_error(memory_error(self._limits, f"its process ended: {_how(code)}"))
        tag, payload = data[:1], memoryview(data)[1:]
        if tag == FAILED:
            failure = json.loads(bytes(payload))
            self.memory = failure["memory"]
            if failure["kind"] == "memory":
                worker.stop()
                raise as_query_error(memory_error(self._limits, failure["message"]))
            self.ended = True  # a plain SQL error: the worker is fine and may serve the next statement
            raise QueryError(failure["message"], fix=failure["fix"])
        return tag, payload


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, context: Any, source: Source, setup: Setup) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=serve, args=(child, os.getpid(), source, setup), daemon=True, name="layerlake-sql"
        )
        self.process.start()
        child.close()

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def send(self, job: Any) -> None:
        try:
            self.conn.send(job)
        except OSError as error:  # it died while idle
            raise QueryError("the query's worker process is gone", fix="run the query again") from error

    def stop(self) -> int | None:
        """Kill the process (if it still runs) and reap it; its exit code (negative: the signal). Safe
        to call twice, and from another thread while a statement waits on it (its wait then ends)."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        with suppress(OSError):
            self.conn.close()
        return self.process.exitcode


POLL_S = 0.2  # the longest the parent waits on a worker's pipe before it looks at its signals again


def _wait(conn: Any, deadline: float | None) -> bool:
    """Whether a message came before ``deadline`` (None: wait for one), waiting in slices of ``POLL_S``: a
    Ctrl-C that the kernel hands to another thread of the parent (DuckDB's) only sets a flag, which the
    main thread acts on when it next runs Python code, never while it blocks in one long ``poll``."""
    while True:
        remaining = _remaining(deadline)
        step = POLL_S if remaining is None else min(POLL_S, remaining)
        if conn.poll(step):
            return True
        if remaining is not None and remaining <= step:
            return False


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def start_forkserver_deaf_to_ctrl_c() -> None:
    """Start multiprocessing's fork server (if it is not running) with SIGINT ignored, as a disposition
    it inherits: it ignores SIGINT itself only once its preload (DuckDB, Arrow, the views: seconds) is
    imported, and a Ctrl-C sent to the terminal's process group meanwhile printed its traceback. The
    parent's handler is back at once; off the main thread (no handler can be set there) it starts as is."""
    from multiprocessing import forkserver

    if threading.current_thread() is not threading.main_thread():
        forkserver.ensure_running()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


# --- the worker's side ------------------------------------------------------------------------------------


def serve(conn: Any, parent_pid: int, source: Source, setup: Setup) -> None:
    """A worker's life: bound its memory, open the views, answer statements until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops this worker
    os.chdir(setup.spill_dir)  # DuckDB spills into ./.tmp: the sandbox's own folder
    _watch_parent(parent_pid)
    served = _Served(source, setup.progress)
    with suppress(LayerlakeError):
        served.connection()  # opened before the memory bound; a failure is each statement's answer
    _bound_memory(setup.memory_bytes)
    while True:
        try:
            sql, variables, what, clip = conn.recv()
        except (EOFError, OSError):
            return
        if not _answer(conn, served, sql, variables, what, setup.limits, clip):
            return


def _answer(
    conn: Any,
    served: _Served,
    sql: str,
    variables: dict[str, Any],
    what: str,
    limits: QueryLimits,
    clip: Clip | None = None,
) -> bool:
    """Run one statement and send its answer (with ``clip``: the page it names, cut); False when this
    worker must end (memory, or no parent)."""
    from layerlake.warehouse.macros import staging_values

    try:
        try:
            con = served.connection()  # opened again if a manifest changed: before the clock starts
        finally:
            conn.send_bytes(STARTED)
        read_only_statement(sql, what, con)  # parsed on the open views' connection: no other database
        set_memory_limit(con, limits)
        with staging_values(con, variables):
            reader = con.sql(sql).to_arrow_reader(BATCH_ROWS)
            names = unique_names(reader.schema.names)  # `select 1 as a, 2 as a`: a, a_1 (as DuckDB's CTAS)
            renamed = names != reader.schema.names
            schema = pa.schema([f.with_name(n) for f, n in zip(reader.schema, names, strict=True)])
            conn.send_bytes(SCHEMA + schema.serialize().to_pybytes())
            clipper = Clipper(clip) if clip is not None else None
            for batch in reader:
                batch = batch.rename_columns(names) if renamed else batch
                sent = clipper.take(batch) if clipper is not None else batch
                if sent is not None:
                    conn.send_bytes(BATCH + sent.serialize().to_pybytes())
        end = {"memory": _memory(), "note": served.note}
        if clipper is not None:
            end["clip"] = clipper.summary()
        conn.send_bytes(END + json.dumps(end).encode())
        return True
    except (BrokenPipeError, ConnectionError, EOFError):
        return False  # the parent stopped reading (it left, or killed the answer): nothing to tell
    except BaseException as error:  # noqa: BLE001 (every failure is told to the parent, none kills the worker silently)
        kind, message, fix = _failure(error)
        try:
            conn.send_bytes(
                FAILED
                + json.dumps({"kind": kind, "message": message, "fix": fix, "memory": _memory()}).encode()
            )
        except (OSError, EOFError):
            return False
        return kind != "memory"  # past the memory limit, a fresh worker serves the next statement


def _failure(error: BaseException) -> tuple[str, str, str | None]:
    """``(kind, message, fix)`` of what stopped a statement: ``memory`` or ``query``."""
    text = str(error)
    if isinstance(error, (MemoryError, duckdb.OutOfMemoryException, pa.ArrowMemoryError)) or (
        isinstance(error, duckdb.Error) and "MemoryError" in text  # a Python function's, through DuckDB
    ):
        return "memory", _first_line(text) or type(error).__name__, None
    if isinstance(error, LayerlakeError):
        return "query", error.message, error.fix
    remote = from_duckdb(error) if isinstance(error, duckdb.Error) else None
    if remote is not None:  # a dataset attached by URL: its server failed, or served other bytes
        return "query", remote.message, remote.fix
    if isinstance(error, duckdb.Error):
        return "query", f"query failed: {text}", STORED_FILE_FIX if reads_a_damaged_file(error) else QUERY_FIX
    return "query", f"query failed: {type(error).__name__}: {text}", QUERY_FIX


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


class _Served:
    """The worker's connection, opened again when a manifest changed (a run still tracking shows its
    new rows on the next statement)."""

    def __init__(self, source: Source, progress: bool) -> None:
        self.source, self.progress = source, progress
        self._stamp: tuple | None = None
        self._con: Any = None
        self.note: str | None = None

    def connection(self) -> Any:
        from layerlake.warehouse.views import gather, hidden_note, open_views

        stamp = manifest_stamp([f for f in (self.source.root, *self.source.attach) if f is not None])
        if self._con is None or stamp != self._stamp:
            if self._con is not None:
                self._con.close()
                self._con = None
            con = open_views(*gather(self.source.root, self.source.attach), read_only=True)
            con.execute("SET enable_progress_bar = ?", [self.progress])
            self._con, self._stamp, self.note = con, stamp, hidden_note(con)
        return self._con


def manifest_stamp(folders: list[Any]) -> tuple:
    """What changes whenever the rows served from ``folders`` may have changed: each manifest's size and
    modification time (a shared folder's ``manifest.json`` is not written after export)."""
    from layerlake.warehouse.manifest import manifest_path

    stamps = []
    for folder in folders:
        if is_url(folder):  # a dataset by URL: its manifest is read once per worker, never rewritten
            stamps.append(str(folder))
            continue
        try:
            stat = manifest_path(folder).stat()
            stamps.append((stat.st_size, stat.st_mtime_ns, stat.st_ino))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


def _bound_memory(allowed: int) -> None:
    """Let this process's data segment grow by at most the memory limit from here (the interpreter, the
    libraries and the open views stay outside the bound)."""
    global _BASE_RSS
    _BASE_RSS = _status_bytes("VmRSS:") or 0
    data = _status_bytes("VmData:")
    if allowed >= NO_RLIMIT or data is None:  # no /proc (not Linux): DuckDB's own limit only
        return
    resource.setrlimit(resource.RLIMIT_DATA, (data + allowed, data + allowed))


def _status_bytes(field: str) -> int | None:
    """A size from ``/proc/self/status`` (``VmData:``, ``VmRSS:``), in bytes; None where there is none."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


_BASE_RSS = 0  # this worker's resident memory when its bound was set


def _memory() -> dict[str, int]:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"base_rss": _BASE_RSS, "peak_rss": peak}


def _watch_parent(pid: int) -> None:
    """End this worker when the process it serves is gone (killed: nobody would read the answer)."""

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_S)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass

    threading.Thread(target=watch, daemon=True, name="layerlake-sql-parent").start()
