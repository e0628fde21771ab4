"""``layerlake share <export|import|attach>``: the command line of ``warehouse.share``.

    layerlake share export DIR [--root R] [--suite S] [--models a,b] [--steps 0,1000] [--tables t,u]
    layerlake share import DIR|URL [--root R] [--dry-run] [--http-timeout S] [--allow-redirect HOST]
    layerlake share attach DIR|URL [--root R] [--sql "select ..."] [--verify] [--timeout S] [--memory-limit M]

A URL is ``http(s)://HOST/PATH`` or ``hf://datasets/ORG/NAME[@revision][/folder]`` (``share.remote``).

``--root`` is the local warehouse (default: ``warehouse.default_root()``). Errors are ``ShareError``s:
the CLI prints them and exits 2.
"""

from __future__ import annotations

import argparse

from layerlake.warehouse.command import add_limit_arguments
from layerlake.warehouse.share.attach import attach, checked_folder
from layerlake.warehouse.share.card import size_text
from layerlake.warehouse.share.export import export_dataset
from layerlake.warehouse.share.importer import import_dataset
from layerlake.warehouse.share.remote import add_remote_arguments, given_sources
from layerlake.warehouse.views import default_root

_SUMMARY = "select table_name, root, count(distinct path) as files, sum(rows) as rows from manifest group by all order by all"


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


def _steps(text: str) -> list[int]:
    try:
        return [int(w) for w in _words(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--steps takes integers separated by commas, got {text!r}"
        ) from None


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="layerlake share", description="Export, import or attach a shared dataset."
    )
    sub = top.add_subparsers(dest="action", required=True)
    root_help = f"local warehouse folder (default: {default_root()})"
    ex = sub.add_parser(
        "export", help="write a stand-alone dataset folder (Parquet, manifest.json, README.md)"
    )
    ex.add_argument("dir", help="new (or empty) folder to export into")
    ex.add_argument("--root", help=root_help)
    ex.add_argument("--suite", help="only this suite")
    ex.add_argument("--models", type=_words, help="only these models, comma separated")
    ex.add_argument("--steps", type=_steps, help="only these steps, comma separated")
    ex.add_argument("--tables", type=_words, help="only these tables, comma separated")
    ex.add_argument("--no-croissant", action="store_true", help="do not write croissant.json")
    ex.add_argument(
        "--license", default="CC-BY-4.0", help="the export's license, an SPDX id (default CC-BY-4.0)"
    )
    ex.add_argument("--citation", help="how to cite the export, e.g. a BibTeX entry (default: one naming it)")
    im = sub.add_parser("import", help="verify a shared folder and merge it into the warehouse")
    im.add_argument(
        "dir", help="the shared dataset folder, or its URL (http(s)://..., hf://datasets/ORG/NAME)"
    )
    im.add_argument("--root", help=root_help)
    im.add_argument("--dry-run", action="store_true", help="verify and plan only; change nothing")
    add_remote_arguments(im)
    at = sub.add_parser("attach", help="query a shared folder in place beside the warehouse (read-only)")
    at.add_argument(
        "dir", help="the shared dataset folder, or its URL (http(s)://..., hf://datasets/ORG/NAME)"
    )
    at.add_argument("--root", help=root_help)
    at.add_argument("--sql", help="a query over the views (default: files and rows per table and root)")
    at.add_argument("--verify", action="store_true", help="also check every file's sha256 first")
    add_limit_arguments(at)
    at.add_argument("--max-rows", type=int, default=50, help="rows of the --sql result shown")
    add_remote_arguments(at)
    return top


def share(argv: list[str]) -> int:
    """Entry point of ``layerlake share``; returns the exit status."""
    args = parser().parse_args(argv)
    if args.action != "export":
        (args.dir,) = given_sources([args.dir], args)
    if args.action == "export":
        root = default_root() if args.root is None else args.root
        report = export_dataset(
            root, args.dir, args.suite, args.models, args.steps, args.tables, not args.no_croissant,
            license=args.license, citation=args.citation,
        )  # fmt: skip
        print(f"exported {report.tasks} tasks, {report.files} files, {report.rows} rows ({size_text(report.bytes)}) "
              f"to {report.dest} (dataset {report.dataset_id})")  # fmt: skip
    elif args.action == "import":
        report = import_dataset(args.dir, args.root, dry_run=args.dry_run)
        verb = "would import" if args.dry_run else "imported"
        print(f"{verb} {len(report.imported)} tasks ({report.files} files, {report.rows} rows, {size_text(report.bytes)}) "
              f"into {report.root}; {len(report.present)} already present")  # fmt: skip
        if report.repaired:
            restore = "would restore" if args.dry_run else "restored"
            print(f"{restore} {len(report.repaired)} missing or damaged local file(s) from the shared copy: "
                  + ", ".join(report.repaired[:5]) + (" ..." if len(report.repaired) > 5 else ""))  # fmt: skip
    elif args.sql:  # a user's statement: the same read-only check and limits as `layerlake sql`
        from layerlake.core.duck import QueryLimits
        from layerlake.warehouse.command import print_result, statement_result

        folder = checked_folder(args.dir, checksums=args.verify)
        limits = QueryLimits(args.timeout, args.memory_limit)
        with statement_result(args.root, [folder], args.sql, limits, what="`share attach --sql`") as result:
            print_result(result, "table", None, args.max_rows)
    else:
        con = attach(args.dir, args.root, checksums=args.verify)
        try:
            print(con.sql(_SUMMARY))
        finally:
            con.close()
    return 0
