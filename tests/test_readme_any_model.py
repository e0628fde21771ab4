"""The README's "Any model, any trainer" section runs as written: its set-up block, then each block in the
same namespace (Lightning, Accelerate, the W&B-style calls), the two torchrun scripts on two processes, and
the Hydra config under a real multirun."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import layerlake

README = Path(__file__).resolve().parents[1] / "README.md"


def section() -> str:
    text = README.read_text()
    start = text.index("## Any model, any trainer")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(), flags=re.S)


def block(first_line: str) -> str:
    """The Python block whose first line is ``first_line``."""
    (found,) = [b for b in blocks("python") if b.splitlines()[0] == first_line]
    return found


def in_process(*firsts: str) -> list[str]:
    """The set-up block, then the blocks starting with each of ``firsts``."""
    return [blocks("python")[0], *(block(f) for f in firsts)]


def runs(data: Path) -> dict[str, list[int]]:
    con = layerlake.connect(data / "warehouse")
    try:
        found = con.sql(
            "select r.run_id, list(c.step order by c.step) from runs r left join checkpoints c using (run_id) "
            "group by r.run_id"
        ).fetchall()
    finally:
        con.close()
    return {run_id: [s for s in steps if s is not None] for run_id, steps in found}


def test_every_python_block_is_run_by_a_test():
    firsts = {b.splitlines()[0] for b in blocks("python")[1:]}
    assert firsts == {
        "from torch import nn", "# train_ddp.py", "# train_fsdp.py", "import lightning.pytorch as pl",
        "from accelerate import Accelerator", "import layerlake as wandb",
    }  # fmt: skip


def test_lightning_accelerate_and_wandb_blocks_run_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERLAKE_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # Lightning saves its checkpoints under the working folder
    scope: dict = {}
    for code in in_process(
        "from torch import nn",
        "import lightning.pytorch as pl",
        "from accelerate import Accelerator",
        "import layerlake as wandb",
    ):
        exec(compile(code, "README.md", "exec"), scope)
    found = runs(tmp_path)
    ((custom, steps),) = [(r, s) for r, s in found.items() if r.startswith("tiny-lm-")]
    assert found.pop(custom) == [0, 4, 8]
    assert found.pop("neox-64-lightning") == [0, 4, 8]
    assert found.pop("neox-64-accelerate") == [0, 4, 7]
    ((wandb_run, steps),) = found.items()
    assert wandb_run.startswith("neox-64-") and steps == [0, 4]
    con = layerlake.connect(tmp_path / "warehouse")
    assert con.sql("select distinct status from runs").fetchall() == [("finished",)]
    assert con.sql("select count(distinct run_id) from scalars").fetchall() == [(4,)]
    custom_rows = con.sql(
        "select architecture, count(distinct layer) from checkpoints c join spectra s using (model, step) "
        "where model = 'tiny-lm' and s.matrix = 'ov' and s.tensor = 'grad' group by all"
    ).fetchall()
    assert custom_rows == [("tiny_lm", 2)]  # the declared layout's name, the ov gradient of both layers


@pytest.mark.parametrize("script", ["# train_ddp.py", "# train_fsdp.py"])
def test_torchrun_scripts_make_one_run(tmp_path, script):
    path = tmp_path / script.removeprefix("# ")
    path.write_text(block(script))
    env = {**os.environ, "LAYERLAKE_DATA": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(path)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = "neox-64-ddp" if "ddp" in script else "neox-64-fsdp"
    assert runs(tmp_path) == {run_id: [0, 4, 8]}
    con = layerlake.connect(tmp_path / "warehouse")
    ranks = con.sql("select name, list(distinct rank order by rank) from scalars group by name order by name")
    expected = [("loss", [0, 1]), ("mean_loss", [])] if "ddp" in script else [("loss", [])]
    assert [(n, [r for r in rs if r is not None]) for n, rs in ranks.fetchall()] == expected


def test_hydra_config_records_every_job(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(blocks("yaml")[0])
    (tmp_path / "train.py").write_text(
        "import hydra\n"
        "@hydra.main(version_base=None, config_path='conf', config_name='config')\n"
        "def main(cfg):\n"
        "    return 1.0 - cfg.lr\n"
        "main()\n"
    )
    env = {**os.environ, "LAYERLAKE_DATA": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "train.py", "-m", "lr=0.001,0.003", f"hydra.sweep.dir={tmp_path / 'multirun'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    con = layerlake.connect(tmp_path / "warehouse")
    rows = con.sql(
        "select r.job_num, r.overrides, r.status, s.value from runs r join scalars s using (run_id) order by job_num"
    ).fetchall()
    assert [(j, o, st) for j, o, st, _ in rows] == [
        (0, ["lr=0.001"], "finished"),
        (1, ["lr=0.003"], "finished"),
    ]
    assert [v for *_, v in rows] == pytest.approx([0.999, 0.997])
