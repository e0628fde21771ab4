"""Share by URL: attach and import an export served over HTTP (and as the Hugging Face Hub serves it),
verified, reading only what a query needs; every fault refused, named, and nothing local changed.

One small export, served by real HTTP servers on 127.0.0.1 (``share_http.Server``: byte ranges, bytes
counted, faults on demand); real DuckDB reading through ``warehouse.share.http.RemoteFileSystem``.
Faults are made on a copy of the export served by a server of the test's own.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from share_http import COMMIT, Server  # tests/ is on sys.path under pytest
from test_share import build_warehouse, tree_hash, view_rows

import layerlake
from layerlake import warehouse
from layerlake.cli.main import main
from layerlake.warehouse.errors import ShareError, WarehouseError
from layerlake.warehouse.share import attach, export_dataset, import_dataset
from layerlake.warehouse.share.http import KEPT, block_digests
from layerlake.warehouse.share.remote import RemoteSource, locate


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """``base/source`` (a warehouse: m1 and m2 at steps 0 and 10) and ``base/export`` (its export)."""
    base = tmp_path_factory.mktemp("url")
    build_warehouse(base / "source", steps=(0, 10))
    export_dataset(base / "source", base / "export")
    return base


@pytest.fixture(scope="module")
def server(shared):
    with Server(shared) as running:
        yield running


@pytest.fixture
def served(server):
    server.reset()
    yield server
    server.reset()


def copy_served(shared: Path, tmp_path: Path) -> tuple[Path, Server]:
    """A copy of the export the test may damage, and a server of its own for it (caller stops it)."""
    folder = tmp_path / "site" / "export"
    shutil.copytree(shared / "export", folder)
    return folder, Server(tmp_path / "site")


def sketch_path(folder: Path, model: str = "m1", step: int = 10) -> str:
    (path,) = (folder / "sketches" / "toy" / model).glob(f"t-{model}-{step}-*.parquet")
    return path.relative_to(folder).as_posix()


def test_attach_by_url_serves_the_same_rows_read_only(shared, served, tmp_path, capsys):
    url = served.url + "/export"
    assert view_rows(tmp_path / "none", (url,)) == view_rows(shared / "source")  # connect(attach=[URL])
    con = attach(url, tmp_path / "none")
    try:
        roots = con.sql("select distinct root from manifest").fetchall()
        paths = con.sql("select path from manifest").fetchall()
        with pytest.raises(Exception, match="(?i)permission|disabled|not allowed"):
            con.sql(f"copy (select 1) to '{tmp_path / 'x.csv'}'").fetchall()
    finally:
        con.close()
    assert roots == [(url,)] and all(p.startswith(url + "/") for (p,) in paths)
    con = layerlake.connect(tmp_path / "none", attach=url)  # one URL, as the facade takes it
    try:
        assert con.sql("select count(*) from sketches").fetchall() == [(16,)]
    finally:
        con.close()
    sql = "select model, count(*) as n from sketches group by all order by all"
    assert main(["sql", "--root", str(tmp_path / "none"), "--attach", url, sql, "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ['"model","n"', '"m1",8', '"m2",8']
    assert main(["share", "attach", url, "--sql", sql, "--verify", "--root", str(tmp_path / "none")]) == 0
    assert "m2" in capsys.readouterr().out


def test_a_query_reads_only_the_files_it_needs(shared, served, tmp_path):
    """A query of one table fetches that table's files only (ranges within big files: the benchmark)."""
    listed = json.loads((shared / "export" / "manifest.json").read_text())["files"]
    con = warehouse.connect(tmp_path / "none", attach=[served.url + "/export"])
    try:
        KEPT.clear()  # what earlier tests fetched is kept: this query starts cold
        served.reset()
        assert con.sql("select count(*) from checkpoints").fetchall() == [(4,)]
    finally:
        con.close()
    checkpoints = sum(f["bytes"] for f in listed if f["table"] == "checkpoints")
    assert 0 < served.sent <= checkpoints < sum(f["bytes"] for f in listed)


def test_import_by_url_downloads_only_what_it_imports(shared, served, tmp_path, capsys):
    url = served.url + "/export"
    manifest_bytes = (shared / "export" / "manifest.json").stat().st_size
    partial = tmp_path / "m1-only"
    export_dataset(shared / "source", partial, models=["m1"])
    target = tmp_path / "wh"
    import_dataset(partial, target)  # m1's files are here already
    m1_bytes = sum(f["bytes"] for f in json.loads((partial / "manifest.json").read_text())["files"])
    total = sum(f["bytes"] for f in json.loads((shared / "export" / "manifest.json").read_text())["files"])
    before = tree_hash(target)
    assert main(["share", "import", url, "--root", str(target), "--dry-run"]) == 0
    assert "would import 3 tasks" in capsys.readouterr().out and tree_hash(target) == before
    served.reset()
    assert main(["share", "import", url, "--root", str(target)]) == 0
    assert "imported 3 tasks" in capsys.readouterr().out  # m2's probe and two checkpoints
    assert served.sent == manifest_bytes + (total - m1_bytes)  # m2's files and the manifest, nothing of m1
    assert view_rows(target) == view_rows(shared / "source")
    entries = [json.loads(line) for line in (target / "_manifest" / "commits.jsonl").read_text().splitlines()]
    assert {e["meta"]["imported_from"] for e in entries[-1]["entries"]} == {url}
    served.reset()
    before = tree_hash(target)
    report = import_dataset(url, target)  # again: nothing new, nothing but the manifest downloaded
    assert (report.imported, served.sent, tree_hash(target)) == ([], manifest_bytes, before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m1-only", "wh"]  # no download folder left


def test_server_gone_mid_query_or_mid_import(shared, tmp_path, capsys):
    folder, server = copy_served(shared, tmp_path)
    local = tmp_path / "wh"
    build_warehouse(local, models=("m3",), steps=(5,))
    before = tree_hash(local)
    with server:
        url = server.url + "/export"
        con = warehouse.connect(local, attach=[url])
        try:
            server.fail_after = server.requests  # the views are open; the next request finds no server
            with pytest.raises(Exception, match="cannot read .*sketches/toy/.*nothing was changed"):
                con.sql("select sum(gram_norm) from sketches").fetchall()
        finally:
            con.close()
        server.reset()
        server.fail_after = 3  # the manifest and two files, then gone
        with pytest.raises(ShareError, match="cannot read") as error:
            import_dataset(url, local)
        assert url in error.value.message or "127.0.0.1" in error.value.message
        server.reset()
        server.fail_after = 0
        assert main(["sql", "--root", str(local), "--attach", url, "select 1"]) == 2
        assert "cannot read" in capsys.readouterr().err
    assert tree_hash(local) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site", "wh"]


def test_file_changed_on_the_server_after_the_manifest(shared, tmp_path, capsys):
    folder, server = copy_served(shared, tmp_path)
    local = tmp_path / "wh"
    build_warehouse(local, models=("m3",), steps=(5,))
    before = tree_hash(local)
    path = sketch_path(folder, "m1", 10)
    good = (folder / path).read_bytes()
    same_size = bytearray(good)
    same_size[len(good) // 2] ^= 0xFF  # one byte changed in a column chunk
    with server:
        url = server.url + "/export"
        for changed in (bytes(same_size), good + b"appended", good[:-100]):
            (folder / path).write_bytes(changed)
            con = warehouse.connect(local, attach=[url])
            try:
                with pytest.raises(Exception, match="changed on the server after its manifest") as error:
                    con.sql("select sum(gram_norm) from sketches").fetchall()
                assert path in str(error.value)
            finally:
                con.close()
            with pytest.raises(ShareError, match="changed on the server after its manifest") as error:
                import_dataset(url, local)
            assert path in error.value.message
            assert main(["share", "attach", url, "--verify", "--root", str(local)]) == 2
            err = capsys.readouterr().err
            assert "changed on the server" in err and path in err and "Traceback" not in err
            assert (
                main(["sql", "--attach", url, "select sum(gram_norm) from sketches", "--root", str(local)])
                == 2
            )
            err = capsys.readouterr().err
            assert "changed on the server" in err and path in err and "Traceback" not in err
    assert tree_hash(local) == before


def test_blocks_are_checked_one_by_one(shared, tmp_path):
    """With blocks listed (here 1 KiB, so a small file has several), a changed byte is caught in the
    block that holds it: the error names that block's bytes."""
    folder, server = copy_served(shared, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    for f in manifest["files"]:
        f.update(block_digests(folder / f["path"], 1024))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    path = sketch_path(folder)
    with server:
        con = warehouse.connect(tmp_path / "none", attach=[server.url + "/export"])
        try:
            assert con.sql("select count(*) from sketches").fetchall() == [(16,)]  # every block matches
            data = bytearray((folder / path).read_bytes())
            data[2500] ^= 0xFF  # in the third block
            (folder / path).write_bytes(bytes(data))
            KEPT.clear()  # else the blocks checked above would be served again, rightly, from memory
            con.close()
            con = warehouse.connect(tmp_path / "none", attach=[server.url + "/export"])
            with pytest.raises(Exception, match=f"{path} changed on the server .*bytes 2048-3071 differ"):
                con.sql("select * from sketches").fetchall()
        finally:
            con.close()


def test_an_export_without_block_hashes_is_read_whole_file_by_file(shared, tmp_path):
    """An export made before block hashes: each file fetched whole and checked against its sha256."""
    folder, server = copy_served(shared, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    for f in manifest["files"]:
        del f["block_bytes"], f["block_sha256"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with server:
        KEPT.clear()
        assert view_rows(tmp_path / "none", (server.url + "/export",)) == view_rows(shared / "source")
        path = sketch_path(folder)
        data = bytearray((folder / path).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / path).write_bytes(bytes(data))
        KEPT.clear()
        con = warehouse.connect(tmp_path / "none", attach=[server.url + "/export"])
        try:
            with pytest.raises(Exception, match=f"{path} changed on the server .*sha256 differs"):
                con.sql("select * from sketches").fetchall()
        finally:
            con.close()


@pytest.mark.parametrize(
    "bad", ["../../secret.parquet", "http://elsewhere.example/x.parquet", "//elsewhere.example/x"]
)
def test_manifest_path_leaving_the_folder_or_to_another_host(shared, tmp_path, bad):
    folder, server = copy_served(shared, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    target = sketch_path(folder)
    for f in manifest["files"] + [f for t in manifest["tasks"] for f in t["files"]]:
        if f["path"] == target:
            f["path"] = bad
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with server:
        url = server.url + "/export"
        for action in (lambda: attach(url, tmp_path / "none"), lambda: import_dataset(url, tmp_path / "wh")):
            with pytest.raises(ShareError, match="does not verify") as error:
                action()
            assert bad in error.value.message and "is not a shard path" in error.value.message
        assert server.requests == 2  # each read the manifest, and nothing else
    assert not (tmp_path / "wh").exists()


def test_redirect_to_another_host_is_refused_unless_allowed(shared, served, tmp_path, capsys):
    with Server(shared) as other:
        elsewhere = other.url.replace("127.0.0.1", "localhost")
        served.redirect = elsewhere
        url = served.url + "/export"
        with pytest.raises(ShareError, match="redirects to localhost") as error:
            attach(url, tmp_path / "none")
        assert "--allow-redirect localhost" in error.value.fix
        assert main(["share", "import", url, "--root", str(tmp_path / "wh")]) == 2
        assert "redirects to localhost" in capsys.readouterr().err and not (tmp_path / "wh").exists()
        source = RemoteSource(url, allow_hosts=("localhost",))
        assert view_rows(tmp_path / "none", (source,)) == view_rows(shared / "source")
        assert other.requests > 1  # the files came from the host redirected to
        sql = "select count(*) from sketches"
        assert main(["sql", "--attach", url, "--allow-redirect", "localhost", sql, "--format", "csv",
                     "--root", str(tmp_path / "none")]) == 0  # fmt: skip
        assert capsys.readouterr().out.split() == ['"count_star()"', "16"]


def test_slow_server_hits_the_time_limit_named(shared, served, tmp_path, capsys):
    url = served.url + "/export"
    con = warehouse.connect(tmp_path / "none", attach=[RemoteSource(url, timeout_s=5)])
    try:
        served.delay_s = 1.5
        with pytest.raises(Exception, match=r"did not answer within the time limit of 0\.5 s|time limit"):
            warehouse.connect(tmp_path / "none", attach=[RemoteSource(url, timeout_s=0.5)])
    finally:
        con.close()
    assert main(["share", "attach", url, "--http-timeout", "0.5", "--root", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "time limit of 0.5 s (--http-timeout)" in err and "fix:" in err


@pytest.mark.parametrize(
    "lie", ["format_version_text", "sha256_number", "path_number", "bytes_text", "bytes_float", "bytes_negative",
            "tasks_null"]
)  # fmt: skip
def test_a_manifest_field_of_another_type_is_refused_by_url_before_any_file_is_read(
    shared, tmp_path, lie, capsys
):
    """The liars of ``test_share_faults.LIES`` served by URL: refused from the manifest alone, named, with
    the fix, exit 2 and no traceback (a negative size reached DuckDB, which failed with an internal
    error; a float one failed every query with ``std::bad_cast``); nothing is downloaded or created."""
    import test_share_faults

    folder, server = copy_served(shared, tmp_path)
    test_share_faults.SHARD = sketch_path(folder)
    test_share_faults.tell_lie(folder, lie)
    said = test_share_faults.LIES[lie][1]
    with server:
        url = server.url + "/export"
        for command in (
            ["share", "attach", url], ["share", "attach", url, "--sql", "select count(*) from sketches"],
            ["sql", "--attach", url, "select count(*) from sketches"], ["share", "import", url],
        ):  # fmt: skip
            assert main([*command, "--root", str(tmp_path / "wh")]) == 2
            err = capsys.readouterr().err
            assert said in err and "fix:" in err and "Traceback" not in err and "INTERNAL" not in err
        with pytest.raises(ShareError, match="manifest.json"):
            import_dataset(url, tmp_path / "wh")
        assert {p.rsplit("/", 1)[-1] for p in server.paths} == {"manifest.json"}  # and nothing else
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no warehouse, no download folder


def _import_in_a_process(url: str, root: Path) -> subprocess.Popen:
    """``share import URL`` in a process of its own, with SIGTERM's default action (whatever the suite's),
    once its download folder is beside the warehouse (the server answers slowly: it is still at work)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "layerlake.cli", "share", "import", url, "--root", str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL),
    )  # fmt: skip
    for _ in range(1200):  # 60 s at most
        if list(root.parent.glob(".layerlake-download-*")) or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None and list(root.parent.glob(".layerlake-download-*")), proc.communicate()
    return proc


def test_an_import_by_url_stopped_by_sigterm_removes_its_download_folder(shared, tmp_path):
    """SIGTERM (a scheduler, `timeout`) stops an import by URL as Ctrl-C does: its download folder is
    removed, it says `terminated` and exits 143, and the warehouse is as it was (SIGTERM's default
    left the folder, which nothing removed)."""
    folder, server = copy_served(shared, tmp_path)
    local = tmp_path / "wh"
    build_warehouse(local, models=("m3",), steps=(5,))
    before = tree_hash(local)
    with server:
        server.delay_s = 1.0
        proc = _import_in_a_process(server.url + "/export", local)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site", "wh"]  # no download folder left
    assert tree_hash(local) == before


def test_what_a_killed_import_by_url_left_is_removed_by_gc_and_the_next_import(shared, tmp_path, capsys):
    """SIGKILL leaves the download folder; its owner's lock is then free, so `gc` removes it (and the
    next import would), while the folder of an import at work is kept."""
    from layerlake.warehouse.writer import DOWNLOAD_OWNER, download_folder

    folder, server = copy_served(shared, tmp_path)
    local = tmp_path / "wh"
    build_warehouse(local, models=("m3",), steps=(5,))
    with server:
        server.delay_s = 1.0
        proc = _import_in_a_process(server.url + "/export", local)
        proc.kill()
        proc.communicate(timeout=60)
        (left,) = tmp_path.glob(".layerlake-download-*")
        assert main(["gc", "--root", str(local), "--dry-run"]) == 0
        assert "would remove 1 files" in capsys.readouterr().out and left.exists()  # its lock file
        assert main(["gc", "--root", str(local)]) == 0
        assert "removed 1 files" in capsys.readouterr().out and not left.exists()
        with download_folder(local) as working:  # an import at work in this process: its lock is held
            assert main(["gc", "--root", str(local)]) == 0 and working.is_dir()
        assert not working.exists()
        (tmp_path / ".layerlake-download-x").mkdir()  # as a SIGKILL leaves it: the lock free
        (tmp_path / ".layerlake-download-x" / DOWNLOAD_OWNER).touch()
        server.reset()
        assert main(["share", "import", server.url + "/export", "--root", str(local)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site", "wh"]
    assert main(["check", "--root", str(local)]) == 0


@pytest.mark.parametrize("head", [False, True], ids=["body", "head-and-body"])
def test_a_server_sending_a_byte_a_second_is_stopped_at_the_time_limit(shared, tmp_path, head):
    """The time limit holds for the whole answer, not for each socket read: a server that sends one byte a
    second (its body only, or from its status line on) ends the command at --http-timeout. The command
    runs in a process of its own, so that a time limit that does not hold fails the test (at the outer
    60 s) instead of hanging it."""
    with Server(shared) as server:
        server.trickle_s, server.trickle_head = 1.0, head
        done = subprocess.run(
            [sys.executable, "-m", "layerlake.cli", "share", "attach", server.url + "/export",
             "--http-timeout", "2", "--root", str(tmp_path / "none")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "did not answer within the time limit of 2 s (--http-timeout)" in done.stderr
    assert "fix:" in done.stderr and "Traceback" not in done.stderr


def test_hub_urls_through_the_same_path(shared, tmp_path, monkeypatch):
    """``hf://datasets/ORG/NAME[@revision]`` read from a local server laid out as the Hub serves files
    (``HF_ENDPOINT``), the revision pinned to the manifest's commit."""
    hub = tmp_path / "hub"
    shutil.copytree(shared / "export", hub / "someone" / "layers" / "v1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with Server(hub, hub=True) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        want = view_rows(shared / "source")
        assert view_rows(tmp_path / "none", ("hf://datasets/someone/layers/v1",)) == want
        assert view_rows(tmp_path / "none", (f"hf://datasets/someone/layers@{COMMIT}/v1",)) == want
        with pytest.raises(ShareError, match="404"):
            attach("hf://datasets/someone/layers@no-such-branch/v1", tmp_path / "none")
        con = attach("hf://datasets/someone/layers/v1", tmp_path / "none")
        try:
            paths = [p for (p,) in con.sql("select path from manifest").fetchall()]
        finally:
            con.close()
        assert all(p.startswith(f"{server.url}/datasets/someone/layers/resolve/{COMMIT}/v1/") for p in paths)
        target = tmp_path / "wh"
        import_dataset("hf://datasets/someone/layers/v1", target)
        assert view_rows(target) == want


def test_the_public_hub_url_and_its_file_hosts(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    base, policy, hub = locate(RemoteSource("hf://datasets/org/name@refs/pr/3/sub/dir"))
    assert hub and base == "https://huggingface.co/datasets/org/name/resolve/refs%2Fpr%2F3/sub/dir/"
    assert ("huggingface.co", "Authorization", "Bearer hf_test") in policy.headers
    origin = ("https", "huggingface.co", 443)
    assert policy.allows(origin, "https://cas-bridge.xethub.hf.co/xet-bridge-us/abc?X-Amz=1")
    assert not policy.allows(origin, "https://evil.example/x") and not policy.allows(
        origin, "http://cdn-lfs.hf.co/x"
    )
    for bad in ("hf://models/org/name", "hf://datasets/org", "ftp://host/x", "https://host/x?token=1"):
        with pytest.raises(WarehouseError):
            locate(RemoteSource(bad))


def test_whole_layer_rows_have_row_groups_of_their_own(tmp_path):
    """The writer stores a task's whole-layer rows (head NULL) first, sorted by key, in a row group no
    per-head row shares, so a whole-layer query skips the per-head Grams by their statistics."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from test_share import checkpoint

    from layerlake.warehouse.writer import Warehouse

    tables = checkpoint("m1", 10)
    whole = tables["sketches"]
    heads = whole.set_column(
        whole.schema.get_field_index("head"), "head", pa.array([1] * whole.num_rows, pa.int32())
    )
    other = heads.slice(0, 1).set_column(
        whole.schema.get_field_index("head"), "head", pa.array([2], pa.int32())
    )
    tables["sketches"] = pa.concat_tables([heads, whole, other]).take([4, 0, 5, 1, 6, 2, 7, 3, 8])  # mixed
    Warehouse(tmp_path / "wh").commit("t", "toy", "m1", tables, {"step": 10})
    (path,) = (tmp_path / "wh" / "sketches").rglob("*.parquet")
    meta = pq.ParquetFile(path).metadata
    head = meta.schema.names.index("head")
    groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
    assert [(g.num_rows, g.column(head).statistics.null_count) for g in groups] == [(4, 4), (5, 0)]
    rows = pq.read_table(path).select(["layer", "site", "head"]).to_pylist()
    assert rows[:4] == sorted(rows[:4], key=lambda r: (r["layer"], r["site"]))


def test_a_compacted_warehouse_export_attaches_and_imports_by_url(tmp_path, capsys):
    """A compacted warehouse's export (format 2: merged files, each task a slice of one) read by URL shows
    the rows of the warehouse, once each, and imports into an empty warehouse with the same rows."""
    from layerlake.warehouse.compact import compact

    source = tmp_path / "site" / "source"
    build_warehouse(source, steps=(0, 10))
    compact(source)
    export_dataset(source, tmp_path / "site" / "export")
    manifest = json.loads((tmp_path / "site" / "export" / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and any(f.get("first_row") is not None for t in manifest["tasks"]
                                            for f in t["files"])  # fmt: skip
    with Server(tmp_path / "site") as running:
        url = running.url + "/export"
        assert view_rows(tmp_path / "none", (url,)) == view_rows(source)
        assert main(["share", "import", url, "--root", str(tmp_path / "imported")]) == 0
    assert view_rows(tmp_path / "imported") == view_rows(source)
    assert main(["check", "--root", str(tmp_path / "imported")]) == 0
