"""``layerlake runs`` and its subcommands: list and filter the runs; tag, note, archive, restore, delete.

The listing is ``warehouse.run_table``'s (the UI's runs page shows the same table); the changes are
``warehouse.run_admin``'s, each one manifest line (all or nothing), each with ``--dry-run``.
"""

from __future__ import annotations

import argparse
from typing import Any

import pyarrow as pa

from layerlake.warehouse import run_admin, run_table
from layerlake.warehouse.command import add_root_argument, render
from layerlake.warehouse.views import _resolve, connect

LISTED = (
    "run_id",
    "status",
    "kind",
    "suite",
    "model",
    "seed",
    "started_at",
    "duration_s",
    "job_num",
    "snapshots",
)


def runs_parser() -> argparse.ArgumentParser:
    """The arguments of ``layerlake runs``."""
    parser = argparse.ArgumentParser(
        prog="layerlake runs",
        description="List the runs: status, kind, the config values that differ between them, the last "
        "logged values, tags. Subcommands: runs tag | note | archive | restore | delete (--help each).",
    )
    add_root_argument(parser)
    parser.add_argument("--suite", help="only this suite")
    parser.add_argument(
        "--filter", "-f", default="", metavar="TERMS",
        help="comma-separated `column op value` terms, op one of = != > >= < <= ~ (contains), e.g. "
        "'lr > 1e-3, status = finished'; config., last. and tag. columns may drop their prefix",
    )  # fmt: skip
    parser.add_argument("--search", "-s", default="", help="only runs with this text in any column")
    parser.add_argument("--sort", default="", help="sort by this column (default: latest start first)")
    parser.add_argument("--desc", action="store_true", help="sort descending")
    parser.add_argument("--config", action="store_true", help="show each run's config and overrides too")
    parser.add_argument("--archived", action="store_true", help="list the archived runs instead")
    parser.add_argument(
        "--mark-killed", action="store_true",
        help="record every run left running by a process that is gone (on this host) as killed; the only "
        "option of the listing that writes",
    )  # fmt: skip
    return parser


def runs(argv: list[str]) -> int:
    """``layerlake runs``: one row per run with its status (a run whose process is gone shows as killed,
    recorded or not: ``--mark-killed`` records it)."""
    from layerlake.warehouse.runs import mark_killed
    from layerlake.warehouse.writer import Warehouse

    args = runs_parser().parse_args(argv)
    root = _resolve(args.root)
    store = Warehouse(root, create=False)
    if args.mark_killed:
        marked = mark_killed(store)
        print(
            f"recorded {len(marked)} run(s) as killed"
            + (f": {', '.join(r.run_id for r in marked)}" if marked else "")
        )
    if args.archived:
        return _list_archived(store)
    con = connect(root, read_only=True)
    try:
        table = run_table.build(con)
        overrides = dict(con.execute("select run_id, overrides from runs").fetchall()) if args.config else {}
        configs = dict(con.execute("select run_id, config_json from runs").fetchall()) if args.config else {}
    finally:
        con.close()
    suite = f"suite = {args.suite}" if args.suite else ""
    rows = table.select(args.search, ", ".join(t for t in (suite, args.filter) if t), args.sort, args.desc)
    for row in rows:
        if args.config:
            row["overrides"], row["config_json"] = overrides[row["run_id"]], configs[row["run_id"]]
    columns = [*LISTED, *(c for c in table.columns if c.startswith(run_table.PREFIXES))]
    columns += ["overrides", "config_json"] if args.config else []
    out = pa.table({c: _column([r.get(c) for r in rows]) for c in columns})
    shown = f"{len(rows)} of {len(table.rows)} runs" if len(rows) != len(table.rows) else f"{len(rows)} runs"
    render(out, title=f"{shown} in {root}", max_rows=1000, max_cell=None if args.config else 40)
    return 0


def _column(values: list[Any]) -> pa.Array:
    """One listed column: typed where every value present is a number or a list and Arrow holds them as
    one type (a run without the value shows it missing), else text. Runs differ in what they hold (a run
    that logged nothing has no ``last.loss``, a killed run no duration, a config value may be a number in
    one run and text in another), so a column's type is decided from all its values, never from one run's."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float, list)) and not isinstance(v, bool) for v in present):
        try:
            return pa.array(values)
        except (pa.ArrowException, OverflowError):  # ints and lists of text, an int beyond 64 bits
            pass
    return pa.array([None if v is None else run_table.text(v) for v in values], pa.string())


def _list_archived(store: Any) -> int:
    from layerlake.warehouse.runs import Run

    runs = [Run.from_meta(e.meta) for e in run_admin.archived_runs(store)]
    rows = [{"run_id": r.run_id, "status": str(r.status), "kind": str(r.kind), "suite": r.suite,
             "model": r.model, "seed": r.seed, "started_at": r.started_at.isoformat()} for r in runs]  # fmt: skip
    out = pa.Table.from_pylist(rows) if rows else pa.table({"run_id": pa.array([], pa.string())})
    render(
        out, title=f"{len(rows)} archived runs in {store.root} (layerlake runs restore RUN shows one again)"
    )
    return 0


# --- changes --------------------------------------------------------------------------------------------


def _parser(name: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"layerlake runs {name}", description=description)
    add_root_argument(parser)
    return parser


def tag_parser() -> argparse.ArgumentParser:
    parser = _parser("tag", "Set tags (key=value) on a run; they show in the UI and in SQL (table run_tags).")
    parser.add_argument("run", help="the run (layerlake runs lists them)")
    parser.add_argument(
        "tags", nargs="*", metavar="key=value", help="tags to set (a key set again is replaced)"
    )
    parser.add_argument("--remove", action="append", default=[], metavar="KEY", help="remove this tag")
    return parser


def tag(argv: list[str]) -> int:
    from layerlake.warehouse.writer import Warehouse

    args = tag_parser().parse_args(argv)
    tags = run_admin.parse_tags(args.tags)
    if not tags and not args.remove:
        tag_parser().error("give at least one key=value (or --remove KEY)")
    now = run_admin.tag(Warehouse(_resolve(args.root), create=False), args.run, tags, args.remove)
    shown = ", ".join(f"{k}={v}" for k, v in now.items()) or "none"
    print(f"run {args.run}: tags {shown}")
    return 0


def note_parser() -> argparse.ArgumentParser:
    parser = _parser("note", "Add a note to a run; notes show on its page and in SQL (table run_notes).")
    parser.add_argument("run", help="the run (layerlake runs lists them)")
    parser.add_argument("text", help="the note (quote it)")
    return parser


def note(argv: list[str]) -> int:
    from layerlake.warehouse.writer import Warehouse

    args = note_parser().parse_args(argv)
    count = run_admin.note(Warehouse(_resolve(args.root), create=False), args.run, args.text)
    print(f"run {args.run}: {count} note{'s' if count != 1 else ''}")
    return 0


def _change_parser(name: str, description: str) -> argparse.ArgumentParser:
    parser = _parser(name, description)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="the runs (layerlake runs lists them)")
    parser.add_argument("--dry-run", "-n", action="store_true", help="say what would change; change nothing")
    return parser


def delete_parser() -> argparse.ArgumentParser:
    return _forced(
        _change_parser(
            "delete",
            "Remove runs and every row of them from every table, all or nothing (one manifest line). "
            "Their files go at the next `layerlake gc` after its grace period. A run still running (its "
            "process alive) is refused.",
        )
    )


def archive_parser() -> argparse.ArgumentParser:
    return _forced(
        _change_parser(
            "archive",
            "Hide runs and all their rows from every view and page, all or nothing, keeping their files "
            "(`layerlake runs restore RUN` shows them again). A run still running (its process alive) is "
            "refused.",
        )
    )


def _forced(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--force", action="store_true",
        help="also a run recorded running by a process of another host (which cannot be checked from "
        "here): only once you know it has ended",
    )  # fmt: skip
    return parser


def restore_parser() -> argparse.ArgumentParser:
    return _change_parser("restore", "Show archived runs again (all or nothing).")


def delete(argv: list[str]) -> int:
    args = delete_parser().parse_args(argv)
    return _change(args, "delete", lambda store: run_admin.delete(store, args.runs, args.dry_run, args.force))


def archive(argv: list[str]) -> int:
    args = archive_parser().parse_args(argv)
    return _change(
        args, "archive", lambda store: run_admin.archive(store, args.runs, args.dry_run, force=args.force)
    )


def restore(argv: list[str]) -> int:
    args = restore_parser().parse_args(argv)
    return _change(
        args, "restore", lambda store: run_admin.archive(store, args.runs, args.dry_run, restore=True)
    )


def _change(args: argparse.Namespace, verb: str, act: Any) -> int:
    from layerlake.warehouse.writer import Warehouse

    store = Warehouse(_resolve(args.root), create=False)
    plans = act(store)
    done = {"delete": "deleted", "archive": "archived", "restore": "restored"}[verb]
    for plan in plans:
        print(f"{'would ' + verb if args.dry_run else done}: {plan.describe()}")
    if args.dry_run:
        print("dry run: nothing was changed")
    elif verb == "delete":
        size = sum(p.bytes for p in plans)
        print(f"{size / 1e6:.1f} MB of files are left for `layerlake gc` to remove (after its grace period)")
    return 0
