"""The manifest follower: a writer parses each manifest line once, and always agrees with a full read."""

from __future__ import annotations

import json
import os

import pytest

from layerlake.warehouse import manifest
from layerlake.warehouse.manifest import CommitEntry, ManifestFollower, append_entry, latest, read_entries


def entry(task: str, status: str = "ok") -> CommitEntry:
    return CommitEntry(status, task, "s", "m", (), {"step": 1}, 2, "2026-01-01T00:00:00Z", run_id="s.m")


def agrees(follower: ManifestFollower) -> None:
    follower.read()
    full = read_entries(follower.path)
    assert follower.entries == full
    assert [e.line for e in follower.entries] == [e.line for e in full]
    assert (follower.committed, follower.failed) == latest(full)


def test_each_line_is_parsed_once(tmp_path, monkeypatch):
    path = tmp_path / "commits.jsonl"
    follower = ManifestFollower(path)
    parsed = []
    original = manifest.parse_lines
    monkeypatch.setattr(
        manifest,
        "parse_lines",
        lambda p, data, first=1: parsed.append(data.count(b"\n")) or original(p, data, first),
    )
    for i in range(50):
        append_entry(path, entry(f"t{i % 7}", "failed" if i % 5 == 0 else "retired" if i % 11 == 0 else "ok"))
        follower.read()
    assert sum(parsed) == 50  # a full read per commit would parse 50 * 51 / 2 lines
    monkeypatch.setattr(manifest, "parse_lines", original)
    agrees(follower)


def test_torn_tail_repair_and_rewrites_are_followed(tmp_path):
    path = tmp_path / "commits.jsonl"
    follower = ManifestFollower(path)
    agrees(follower)  # no file yet
    for i in range(3):
        append_entry(path, entry(f"t{i}"))
    agrees(follower)
    with open(path, "ab") as handle:  # a writer killed mid-append
        handle.write(b'{"status": "ok", "task_')
    agrees(follower)
    append_entry(path, entry("t3"))  # repairs the torn line first
    agrees(follower)
    assert [e.task_id for e in follower.entries] == ["t0", "t1", "t2", "t3"]

    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]))  # shrunk in place
    agrees(follower)
    same_size = lines[0].replace(b'"t0"', b'"x0"')
    path.write_bytes(b"".join([lines[0], same_size]) + b"\n")  # rewritten in place: other bytes, another size
    agrees(follower)
    replacement = tmp_path / "new.jsonl"  # replaced by rename (another inode)
    replacement.write_bytes(b"".join(lines[::-1]))
    os.replace(replacement, path)
    agrees(follower)
    path.unlink()
    agrees(follower)
    assert follower.entries == []


def test_a_corrupt_appended_line_is_an_error_naming_its_number(tmp_path):
    path = tmp_path / "commits.jsonl"
    follower = ManifestFollower(path)
    append_entry(path, entry("t0"))
    follower.read()
    with open(path, "ab") as handle:
        handle.write(json.dumps({"status": "ok"}).encode() + b"\n")
    with pytest.raises(manifest.ManifestError, match="line 2"):
        follower.read()


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [("bytes", 9502.0, "bytes 9502.0 (a float) is not a whole number >= 0"),
     ("rows", "40", 'rows "40" (text) is not a whole number >= 0'),
     ("bytes", -1, "bytes -1 (int) is not a whole number >= 0"),
     ("sha256", 12345, "sha256 12345 (int) is not text")],
)  # fmt: skip
def test_a_line_holding_a_field_of_another_type_is_an_error_naming_it(tmp_path, field, value, said):
    """The warehouse's own manifest is read by the parser of shared manifests, held to the same types: a
    float size (which an import once let through) is named, not read as a size."""
    path = tmp_path / "commits.jsonl"
    listed = {"table": "sketches", "path": "sketches/s/m/t0-0123456789abcdef.parquet", "sha256": "0" * 64,
              "rows": 4, "bytes": 9502, field: value}  # fmt: skip
    line = entry("t0").to_json() | {"files": [listed]}
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(manifest.ManifestError, match="line 1") as error:
        read_entries(path)
    assert said in error.value.message and "task t0, file sketches/s/m/t0-" in error.value.message
    assert "correct the value it names" in error.value.fix
