"""The README's "Track your own training" section runs as written, in a fresh folder: its Python (the plain
loop twice: a second run of the script must work too), the Trainer example as it stands, its commands
and its SQL."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import pytest
from readme import blocks, commands

import layerlake
from layerlake.cli.main import main

SECTION = "Track your own training"


def section_blocks(language: str) -> list[str]:
    return [text for lang, text in blocks(SECTION) if lang == language]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """The plain-loop example, run as written, twice, in a fresh folder; then the Trainer example."""
    folder = tmp_path_factory.mktemp("readme-tracking")
    plain, trainer = section_blocks("python")
    with pytest.MonkeyPatch.context() as env:
        env.chdir(folder)
        env.setenv("LAYERLAKE_DATA", str(folder / "data"))
        exec(compile(plain, "README.md", "exec"), {})
        con = layerlake.connect(folder / "data" / "warehouse")
        first = con.sql("select count(*) from sketches").fetchall()
        con.close()
        exec(compile(plain, "README.md", "exec"), {})  # again: the same two runs, done again
        exec(compile(trainer, "README.md", "exec"), {})
    return folder / "data", first


def test_plain_loop_example_makes_two_runs_with_snapshots_at_the_cadence(tracked):
    data, first = tracked
    con = layerlake.connect(data / "warehouse")
    runs = con.sql("select run_id, status, seed from runs where run_id like 'neox-64-seed%' order by run_id")
    assert runs.fetchall() == [("neox-64-seed0", "finished", 0), ("neox-64-seed1", "finished", 1)]
    steps = con.sql(
        "select run_id, list(step order by step) from checkpoints where run_id like 'neox-64-seed%' "
        "group by run_id order by run_id"
    )
    assert steps.fetchall() == [("neox-64-seed0", [0, 16, 32]), ("neox-64-seed1", [0, 16, 32])]
    # the second run of the script replaced the rows of the first: none doubled
    again = con.sql("select count(*) from sketches where run_id like 'neox-64-seed%'").fetchall()
    assert again == first
    config = con.sql("select distinct config_json from runs where run_id like 'neox-64-seed%'").fetchall()
    assert config == [('{"batch_size": 8, "lr": 0.003}',)]


def test_trainer_example_runs_as_written(tracked):
    data, _ = tracked
    con = layerlake.connect(data / "warehouse")
    (steps,) = con.sql(
        "select list(step order by step) from checkpoints where run_id = 'neox-64-trainer'"
    ).fetchall()[0]
    # Pythia's schedule up to max_steps, with the step before the first update and the final one
    assert steps == [0, 1, 2, 4, 8, 16], steps
    losses = con.sql(
        "select count(*) from scalars where run_id = 'neox-64-trainer' and name = 'loss'"
    ).fetchall()
    assert losses[0][0] >= 4  # what the Trainer logged every 4 of its 16 steps


def test_commands_and_sql_of_the_section_run(tracked, monkeypatch):
    assert sorted(lang for lang, _ in blocks(SECTION)) == ["bash", "python", "python", "sql"]  # each run here
    data, _ = tracked
    monkeypatch.setenv("LAYERLAKE_DATA", str(data))
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.chdir(data.parent)
    printed = {}
    for line, argv in commands(section_blocks("bash")[0]):
        assert argv[0] == "layerlake", line
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(argv[1:]) == 0, line
        assert "0 rows" not in out.getvalue(), line
        printed[line] = out.getvalue()
    (grouped,) = [out for line, out in printed.items() if "group_by=lr" in line]
    assert "group_value" in grouped and "0.003" in grouped, grouped
    con = layerlake.connect(data / "warehouse")
    rows = con.sql(section_blocks("sql")[0]).fetchall()
    assert len(rows) == 3 * 2 * 4  # steps x layers x sites
    assert all(0.0 <= cka <= 1.0 + 1e-6 for *_, cka in rows)
