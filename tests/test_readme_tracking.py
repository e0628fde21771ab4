"""The README's "Track your own training" section runs as written: its Python, its commands, its SQL."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import layerlake
from layerlake.cli.main import main

README = Path(__file__).resolve().parents[1] / "README.md"


def section() -> str:
    text = README.read_text()
    start = text.index("## Track your own training")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(), flags=re.S)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """The plain-loop example, run as written into a fresh data folder."""
    data = tmp_path_factory.mktemp("readme-data")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LAYERLAKE_DATA", str(data))
        exec(compile(blocks("python")[0], "README.md", "exec"), {})
    return data


def test_plain_loop_example_makes_two_runs_with_snapshots_at_the_cadence(tracked):
    con = layerlake.connect(tracked / "warehouse")
    runs = con.sql("select run_id, status, seed from runs order by run_id").fetchall()
    assert runs == [("neox-64-seed0", "finished", 0), ("neox-64-seed1", "finished", 1)]
    steps = con.sql(
        "select run_id, list(step order by step) from checkpoints group by run_id order by run_id"
    )
    assert steps.fetchall() == [("neox-64-seed0", [0, 64, 128]), ("neox-64-seed1", [0, 64, 128])]


def test_trainer_example_runs(tracked, tmp_path, monkeypatch):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, TrainingArguments

    monkeypatch.setenv("LAYERLAKE_DATA", str(tmp_path))
    ids = torch.randint(0, 512, (16, 64), generator=torch.Generator().manual_seed(0))
    scope = {
        "layerlake": layerlake,
        "model": GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=512,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=256,
            )  # fmt: skip
        ),
        "probe": ids[:8],
        "data": [{"input_ids": row, "labels": row} for row in ids],
        "args": TrainingArguments(
            output_dir=str(tmp_path / "out"),
            max_steps=4,
            per_device_train_batch_size=4,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        ),  # fmt: skip
    }
    exec(compile(blocks("python")[1], "README.md", "exec"), scope)
    con = layerlake.connect(tmp_path / "warehouse")
    assert con.sql("select list(step order by step) from checkpoints").fetchall() == [([0, 1, 2, 4],)]


def test_commands_and_sql_of_the_section_run(tracked, monkeypatch, capsys):
    monkeypatch.setenv("LAYERLAKE_DATA", str(tracked))
    for line in blocks("bash")[0].splitlines():
        command = shlex.split(line.split("#")[0])
        assert command[0] == "layerlake"
        assert main(command[1:]) == 0, line
        out = capsys.readouterr().out
        assert "0 rows" not in out, line
    con = layerlake.connect(tracked / "warehouse")
    rows = con.sql(blocks("sql")[0]).fetchall()
    assert len(rows) == 3 * 2 * 4  # steps x layers x sites
    assert all(0.0 <= cka <= 1.0 + 1e-6 for *_, cka in rows)
