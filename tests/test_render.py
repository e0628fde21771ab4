"""The one table renderer in an 80-column terminal: key columns (identity and numbers) always show, whole
and within the width; descriptive text folds or goes; recipes read as one block each."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest
from rich.console import Console

from layerlake.cli.main import main
from layerlake.core.render import BREAK_AFTER, cell, fold_header, fold_text, json_rows, print_table

WIDTH = 80


def printed(table: pa.Table, title: str = "", **kwargs) -> str:
    console = Console(file=io.StringIO(), width=WIDTH)
    print_table(table, title, console, **kwargs)
    out = console.file.getvalue()
    assert max(len(line) for line in out.splitlines()) <= WIDTH, out
    return out


def spectra_like(rows: int = 6) -> pa.Table:
    """Like ``rank_trajectories``: identity columns, many number columns, a long descriptive column."""
    return pa.table(
        {
            "model": [f"model-{i % 2}" for i in range(rows)],
            "step": pa.array([1000 + i for i in range(rows)], pa.int64()),
            "tensor": ["weight"] * (rows - 1) + ["grad"],
            "matrix": [f"dense_4h_to_h{i}" for i in range(rows)],
            "layer": pa.array(list(range(rows)), pa.int32()),
            "rows": pa.array([2048 + i for i in range(rows)], pa.int32()),
            "cols": pa.array([8192 + i for i in range(rows)], pa.int32()),
            "probe_id": [f"aa8debf5bffe236{i}" for i in range(rows)],
            "numerical_rank": pa.array([700 + i for i in range(rows)], pa.int64()),
            "erank": [11.25 + i for i in range(rows)],
            "per": [0.625 + i for i in range(rows)],
            "stable_rank": [33.5 + i for i in range(rows)],
            "condition_number": [1234.0 + i for i in range(rows)],
            "note": ["a long free-text remark about this row that nobody needs to read here"] * rows,
        }
    )


def test_every_key_column_and_value_shows_at_80_columns():
    table = spectra_like()
    out = printed(table, "rank_trajectories", hoist_constants=False)
    for row in table.to_pylist():
        for name in (
            "step",
            "rows",
            "cols",
            "numerical_rank",
            "erank",
            "per",
            "stable_rank",
            "condition_number",
        ):
            assert f"{row[name]:.4g}" in out, (name, out)
        for name in ("model", "tensor", "layer"):
            assert str(row[name]) in out
    for piece in ("numerical_", "stable_", "condition_", "number"):  # headers fold after underscores
        assert piece in out
    assert "a long free-text" not in out and "aa8debf5" not in out  # descriptive text gives way ...
    assert "2 more columns not shown (probe_id, note)" in out  # ... and the caption names it


def test_descriptive_text_folds_when_there_is_room():
    table = pa.table({"view": ["checkpoints"], "column": ["weights_sha256"], "doc": ["word " * 40]})
    out = printed(table, hoist_constants=False, max_cell=None)
    assert out.count("word") == 40 and "more columns" not in out


def test_identity_columns_repeat_when_values_need_two_tables():
    names = [f"value_number_{i}" for i in range(9)]
    table = pa.table({"model": ["m"], "layer": [3], **{n: [1001.0 + i] for i, n in enumerate(names)}})
    out = printed(table, hoist_constants=False)
    assert "(columns 1 of 2)" in out and "(columns 2 of 2)" in out
    assert out.count("│ m ") == 2  # the model shows beside each half of the values
    assert all(f"{1001.0 + i:.4g}" in out for i in range(9))


def test_records_when_not_even_identity_and_one_value_fit():
    identity = ("suite", "model", "source", "site", "tensor", "matrix", "metric")
    table = pa.table({**{n: [f"{n}-value-abc"] for n in identity}, "x": [1.5]})
    out = printed(table, hoist_constants=False)
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert all(f"{n} {n}-value-abc" in lines for n in identity) and "x 1.5" in lines


@pytest.mark.parametrize(
    "name,width,expected",
    [
        ("numerical_rank", 10, "numerical_\nrank"),
        ("first_loss", 8, "first_\nloss"),
        ("checkpoints", 8, "checkpoi\nnts"),
    ],
)
def test_headers_fold_after_underscores(name, width, expected):
    assert fold_header(name, width) == expected


def test_recipes_read_as_blocks_at_80_columns(monkeypatch, capsys):
    from layerlake.queries.loader import list_recipes

    monkeypatch.setenv("COLUMNS", str(WIDTH))
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= WIDTH
    for recipe in list_recipes():
        assert any(line.startswith(f"{recipe.name}: ") for line in lines), recipe.name
        block = out.split(f"\n{recipe.name}: ", 1)[1]
        for param in recipe.params:
            assert f"  {param.name}  " in block.split("\nplot:")[0], (recipe.name, param.name)


def test_json_rows_have_no_nan_or_infinity_at_any_depth():
    table = pa.table({
        "x": [1.5, float("nan"), float("inf"), None],
        "x32": pa.array([float("-inf"), 2.0, 3.0, 4.0], pa.float32()),
        "n": pa.array([1, 2, 3, 4], pa.int64()),
        "name": ["a", None, "c", "d"],
        "sv": [[1.0, float("nan")], None, [], [float("-inf")]],
    })  # fmt: skip
    want = [
        {"x": 1.5, "x32": None, "n": 1, "name": "a", "sv": [1.0, None]},
        {"x": None, "x32": 2.0, "n": 2, "name": None, "sv": None},
        {"x": None, "x32": 3.0, "n": 3, "name": "c", "sv": []},
        {"x": None, "x32": 4.0, "n": 4, "name": "d", "sv": [None]},
    ]
    assert json_rows(table) == want
    assert json_rows(table.to_batches()[0]) == want
    assert json_rows(table.slice(1, 2)) == want[1:3]


def stabilisation_like() -> pa.Table:
    """Two runs of one model whose rows agree in everything but the run: as ``stabilisation`` prints."""
    return pa.table({
        "suite": ["embedded"] * 4, "model": ["embedded-llama-s"] * 4,
        "run_id": ["embedded.embedded-llama-s", "embedded.embedded-llama-s.seed2"] * 2,
        "source": ["computed"] * 4, "probe_id": ["aa8debf5bffe2361"] * 4, "site": ["mlp_out"] * 4,
        "layer": pa.array([0, 0, 1, 1], pa.int32()), "head": pa.array([None] * 4, pa.int32()),
        "stabilisation_step": pa.array([512, 512, 1024, 1024], pa.int64()),
        "stabilisation_fraction": [0.5, 0.5, 1.0, 1.0], "final_step": pa.array([1024] * 4, pa.int64()),
        "mean_cka": [0.9, 0.9, 0.8, 0.8], "n_checkpoints": pa.array([9] * 4, pa.int64()),
        "optimiser": ["adamw", "adamw-with-a-long-name", "adamw", "adamw-with-a-long-name"],
    })  # fmt: skip


@pytest.mark.parametrize("hoist", [True, False])
def test_the_run_is_never_dropped(hoist):
    """Two runs of one model whose rows agree in all else: run_id stays on screen at 80 columns."""
    out = printed(stabilisation_like(), "stabilisation", hoist_constants=hoist)
    assert "run_id" in out and "seed2" in out and "more columns not shown (probe_id" not in out


def test_a_text_column_that_tells_rows_apart_is_kept_others_go():
    """``variant`` is no identity column, but without it rows 1 and 2 would look the same: it stays,
    while ``note`` (the same text in every row) goes, named in the caption."""
    base = stabilisation_like().drop_columns(["run_id", "optimiser"])
    notes = [f"some long descriptive remark on layer {i // 2} that nobody needs to read" for i in range(4)]
    table = base.append_column("note", pa.array(notes)).append_column(
        "variant", pa.array(["v-one", "v-two"] * 2)
    )
    console = Console(file=io.StringIO(), width=64)
    print_table(table, "", console, hoist_constants=True)
    out = console.file.getvalue()
    assert "v-one" in out and "v-two" in out
    assert "some long" not in out and "1 more columns not shown (note)" in " ".join(out.split())


def test_names_fold_only_between_words():
    """Every piece of a folded name starts at the name's start or after a ``-_./:, `` and ends at its end
    or on one: ``embedded-`` / ``llama-s``, never ``embedded-l`` / ``lama-s``."""
    table = stabilisation_like()
    names = [v for c in table.column_names for v in set(table.column(c).to_pylist()) if isinstance(v, str)]
    for width in (56, 64, 80, 100):
        console = Console(file=io.StringIO(), width=width)
        print_table(table, "", console, hoist_constants=False)
        out = console.file.getvalue()
        for line in out.splitlines():
            for piece in (p.strip() for p in line.split("│")):
                places = [
                    (name, i)
                    for name in names
                    for i in range(len(name))
                    if piece and name.startswith(piece, i)
                ]
                if len(piece) < 2 or not places or any(piece == name for name, _ in places):
                    continue
                assert any(
                    (i == 0 or name[i - 1] in BREAK_AFTER)
                    and (i + len(piece) == len(name) or piece[-1] in BREAK_AFTER)
                    for name, i in places
                ), (piece, out)
    assert fold_text("embedded-llama-s", 10) == "embedded-\nllama-s"
    assert fold_text("embedded.embedded-llama-s.seed2", 20) == "embedded.embedded-\nllama-s.seed2"
    assert fold_text("abcdefghijkl", 5) == "abcde\nfghij\nkl"  # one long word: the only cut


def test_caption_says_how_to_see_the_rest():
    table = pa.table({"step": pa.array(range(100), pa.int64()), "x": [0.5] * 100})
    out = printed(table, hoist_constants=False, more_rows="--max-rows N or --all")
    assert "100 rows (showing 20; --max-rows N or --all)" in " ".join(out.split())


def test_times_print_to_the_second():
    from datetime import datetime, timedelta, timezone

    table = pa.table(
        {
            "run_id": ["r"],
            "started_at": pa.array([datetime(2025, 1, 31, 14, 5, 9, 123456, tzinfo=timezone.utc)]),
        }
    )
    out = printed(table, hoist_constants=False)
    assert "2025-01-31 14:05:09 UTC" in out and "123456" not in out
    assert cell(datetime(2025, 1, 31, 14, 5, 9, 5)) == "2025-01-31 14:05:09"
    assert (
        cell(datetime(2025, 1, 31, 14, 5, 9, tzinfo=timezone(timedelta(hours=2))))
        == "2025-01-31 14:05:09+0200"
    )


def test_a_runs_status_and_kind_stay_however_many_number_columns_there_are():
    """`layerlake runs` at 80 columns with config values: status and kind are what it is read for;
    they were dropped as descriptive text while every number column stayed."""
    n = 3
    table = pa.table({
        "run_id": [f"neox-64-seed{i}" for i in range(n)],
        "status": ["finished", "running", "failed"],
        "kind": ["train", "train", "extract"],
        "suite": ["mine"] * n,
        "started_at": ["2026-12-07 21:00:00"] * n,
        **{f"config.number_{i}": [0.003 * (i + 1)] * n for i in range(8)},
    })  # fmt: skip
    out = printed(table, "runs", hoist_constants=False)
    assert "status" in out and "running" in out and "kind" in out and "extract" in out
