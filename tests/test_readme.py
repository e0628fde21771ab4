"""The README's blocks run as written, each in a fresh folder: every bash, python and SQL block a user
would run is run here (or in tests/test_readme_tracking.py), except the few in ``NOT_RUN``, each with the
reason; a new block that is neither fails ``test_every_block_is_run_or_says_why_not``."""

from __future__ import annotations

import io
import re
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from readme import block, blocks, commands

from layerlake.cli.main import main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path("tests") / "fixtures" / "pythia-paper"

# Commands of the README that no test here runs, by how their line starts, with the reason.
NOT_RUN = {
    "make demo": "the whole demo (about 30 minutes on 2 cores); its steps are the commands run below",
    "make test": "the test suite itself",
    "layerlake extract suite=pythia steps=paper models=[pythia-160m-deduped] executor=ray executor.num_gpus=1": (
        "downloads Pythia from the Hugging Face hub and asks for a GPU (docs/gpu.md has the GPU check)"
    ),
    "layerlake extract suite=olmo": "lists and downloads OLMo checkpoints from the hub",
    "layerlake extract suite=pythia suite.keep_downloads=true": "downloads Pythia from the hub",
    "layerlake extract suite=pythia suite.download_budget_gb=50": "downloads Pythia from the hub",
    "layerlake ui": "serves until stopped; tests/test_ui.py and test_ui_browser.py drive the same app",
}
# Blocks run by tests/test_readme_tracking.py (the "Track your own training" section).
TRACKING = ("import torch", "layerlake runs", "select a.step")
# The embedded suite takes the demo's half hour: its commands run on the tiny suite (the same code).
SLOW = (
    "layerlake suite build",
    "layerlake extract executor=ray",
    "layerlake extract extract.store_activations=true",
)


def not_run(line: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if line.startswith(start)), None)


def test_every_block_is_run_or_says_why_not():
    for language, text in blocks():
        first = text.splitlines()[0]
        if language == "":
            assert first.lstrip("┏━ ").startswith(("Layers", "model")) or "━" in text, (
                first
            )  # the demo's output
        elif first.startswith(TRACKING):
            continue
        elif language == "bash":
            for line, _ in commands(text):
                assert line.startswith("layerlake ") or not_run(line), (
                    f"a README command no test runs: {line}"
                )
        else:
            assert language == "python" and first == "import layerlake", (
                f"a README block no test runs: {first}"
            )
    for start in NOT_RUN:  # every exception still names a line of the README
        assert any(
            line.startswith(start) for lang, t in blocks() if lang == "bash" for line, _ in commands(t)
        )


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A fresh folder to run in: the README's relative paths (the metrics sample) as in a checkout, and
    its own data folder (LAYERLAKE_DATA)."""
    folder = tmp_path_factory.mktemp("readme")
    shutil.copytree(REPO / SAMPLE, folder / SAMPLE)
    with pytest.MonkeyPatch.context() as env:
        env.chdir(folder)
        env.setenv("LAYERLAKE_DATA", str(folder / "data"))
        env.setenv("COLUMNS", "120")
        yield folder


def run_block(text: str, tiny: tuple[str, ...] = ()) -> dict[str, tuple[int, str]]:
    """Run each command of a bash block in-process; ``{line: (exit code, stdout)}``."""
    results = {}
    for line, argv in commands(text):
        if not_run(line):
            continue
        assert argv[0] == "layerlake", line
        extra = list(tiny) if line.startswith(SLOW) else []
        out = io.StringIO()
        with redirect_stdout(out):
            code = main([*argv[1:], *extra])
        results[line] = (code, out.getvalue())
    return results


def test_the_authors_values_reproduce_the_median_table_the_readme_quotes(fresh):
    text = block("layerlake import-metrics")
    results = run_block(text)
    assert all(code == 0 for code, _ in results.values()), results
    (result,) = sorted((fresh / "data" / "runs").glob("*/result.parquet"))
    p50 = {(r["model"], r["site"], r["step"]): r["p50"] for r in pq.read_table(result).to_pylist()}
    said = re.search(
        r"160m attention: (\.\d+) at step 23k, (\.\d+) at 43k; 2\.8b MLP: (\.\d+) and (\.\d+)",
        REPO.joinpath("README.md").read_text(),
    )
    assert said, "the README no longer quotes the median table"
    got = (p50[("pythia-160m-deduped", "ov", 23000)], p50[("pythia-160m-deduped", "ov", 43000)],
           p50[("pythia-2.8b-deduped", "mlp_out", 23000)], p50[("pythia-2.8b-deduped", "mlp_out", 43000)])  # fmt: skip
    assert [f"{v:.3f}".lstrip("0") for v in got] == list(said.groups())
    assert (result.parent / "layer_percentiles.png").stat().st_size > 20_000  # Figure 1


@pytest.fixture(scope="module")
def used(fresh, tiny_overrides):
    """The "Using it" block, run in order in the fresh folder."""
    shutil.rmtree(fresh / "data", ignore_errors=True)
    return run_block(block("layerlake --help"), tiny_overrides)


@pytest.mark.ray
def test_every_command_of_using_it_runs(used, fresh):
    failed = {line: code for line, (code, _) in used.items() if code != 0}
    assert not failed, failed
    ran = set(used)
    assert any(line.startswith("layerlake extract executor=ray") for line in ran)
    assert (fresh / "sketches.parquet").stat().st_size > 0  # `--output sketches.parquet`, where it was run
    listed = next(
        out for line, (_, out) in used.items() if line.startswith('layerlake sql "select model, layer, per(')
    )
    assert "5 rows" in listed


@pytest.mark.ray
def test_the_python_block_runs_without_pandas_calls(used, fresh):
    out = io.StringIO()
    with redirect_stdout(out):
        exec(compile(block("import layerlake", "python"), "README.md", "exec"), {})
    rows = eval(out.getvalue())  # the printed tuples
    assert len(rows) == 5 and all(len(row) == 5 for row in rows)
    assert ".df()" not in block("import layerlake", "python").split("#")[0]
