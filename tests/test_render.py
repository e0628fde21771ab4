"""The one table renderer in an 80-column terminal: key columns (identity and numbers) always show, whole
and within the width; descriptive text folds or goes; recipes read as one block each."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest
from rich.console import Console

from layerlake.cli.main import main
from layerlake.core.render import fold_header, json_rows, print_table

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
    assert "note" not in out and "probe_id" not in out  # descriptive text gives way
    assert "2 more columns not shown" in out


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
