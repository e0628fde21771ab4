"""The README's blocks run as written, each in a fresh folder. Every block is run by exactly one test:
here (the analysis example, "Using it", the two output blocks), the README's "From Python" block in a
core install (tests/test_packaging.py), or, for a section in ``RUN_ELSEWHERE``, by that section's own
module, which checks that it runs each block of its section. Commands no test runs are in ``NOT_RUN``,
each with the reason; a new block that is none of these fails ``test_every_block_is_run_once``."""

from __future__ import annotations

import io
import re
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from readme import README, block, blocks, commands, sections
from rich.console import Console

from layerlake.cli.main import main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path("tests") / "fixtures" / "pythia-paper"

# Sections run whole by another module (each checks it runs every block of its section).
RUN_ELSEWHERE = {
    "Track your own training": "test_readme_tracking.py",
    "Any model, any trainer": "test_readme_any_model.py",
}
# Bash blocks run here, by their first line.
RUN_HERE = ("layerlake import-metrics", "layerlake --help")
# The Python block run in a wheel install without pandas (tests/test_packaging.py).
CORE_INSTALL = "import layerlake\n"
# Output blocks, by their first line: what `layerlake --version` and the demo print.
VERSION_OUTPUT = "$ layerlake --version"
DEMO_TITLE = "Layers stabilised by half of training"
# Commands of the README that no test runs, by how their line starts, with the reason.
NOT_RUN = {
    "make demo": "the whole demo (about 30 minutes on 2 cores); its steps are the commands run below",
    "make test": "the test suite itself",
    "layerlake extract suite=pythia steps=paper models=[pythia-160m-deduped] executor=ray executor.num_gpus=1": (
        "downloads Pythia from the Hugging Face hub and asks for a GPU (docs/gpu.md has the GPU check)"
    ),
    "layerlake extract suite=olmo": "lists and downloads OLMo checkpoints from the hub",
    "layerlake extract suite=pythia suite.keep_downloads=true": "downloads Pythia from the hub",
    "layerlake extract suite=pythia suite.download_budget_gb=50": "downloads Pythia from the hub",
    "layerlake extract executor.device=cuda": (
        "asks for a GPU (docs/gpu.md's precision check runs these options on one; tests/test_pass_precision.py "
        "runs them on the CPU)"
    ),
    "layerlake ui": "serves until stopped; tests/test_ui.py and test_ui_browser.py drive the same app",
}
# The README's Ray extraction runs on the local executor here: tests/test_ray_auth.py runs that line on a
# local Ray cluster (whose start-up is most of its time on a small suite).
ON_RAY_ELSEWHERE = "layerlake extract executor=ray"
# The embedded suite takes the demo's half hour: these commands run on the tiny suite (the same code).
TINY = (
    "layerlake suite build",
    "layerlake extract executor=ray",
    "layerlake extract extract.store_activations=true",
)


# What the extractions read of the tiny suite: one model, five checkpoints (the same code as all of them).
FEWER_CHECKPOINTS = ("models=[tiny-a]", "steps.only=[0,1,2,4,8]")


def not_run(line: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if line.startswith(start)), None)


def test_every_block_is_run_once():
    for section in sections():
        if section in RUN_ELSEWHERE:
            assert (REPO / "tests" / RUN_ELSEWHERE[section]).is_file(), RUN_ELSEWHERE[section]
            continue
        for language, body in blocks(section):
            first = body.splitlines()[0]
            if language == "":
                assert first == VERSION_OUTPUT or first.strip().startswith(DEMO_TITLE), (
                    f"an output block: {first}"
                )
            elif language == "bash":
                lines = [line for line, _ in commands(body)]
                assert first.startswith(RUN_HERE) or all(map(not_run, lines)), (
                    f"a README block no test runs: {first}"
                )
            else:
                assert language == "python" and body.startswith(CORE_INSTALL), (
                    f"a README block no test runs: {first}"
                )
    for start in NOT_RUN:  # every exception still names a line of the README
        assert any(
            line.startswith(start) for lang, t in blocks() if lang == "bash" for line, _ in commands(t)
        ), start


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
        extra = list(tiny) if line.startswith(TINY) else []
        if line.startswith(ON_RAY_ELSEWHERE):
            argv = ["executor=local" if a == "executor=ray" else a for a in argv]
        out = io.StringIO()
        with redirect_stdout(out):
            code = main([*argv[1:], *extra])
        results[line] = (code, out.getvalue())
    return results


def test_the_authors_values_reproduce_the_median_table_the_readme_quotes(fresh):
    results = run_block(block(RUN_HERE[0]))
    assert all(code == 0 for code, _ in results.values()), results
    (result,) = sorted((fresh / "data" / "runs").glob("*/result.parquet"))
    p50 = {(r["model"], r["site"], r["step"]): r["p50"] for r in pq.read_table(result).to_pylist()}
    said = re.search(
        r"160m attention: (\.\d+) at\s+step 23k, (\.\d+) at\s+43k; 2\.8b\s+MLP: (\.\d+) and\s+(\.\d+)",
        README.read_text(),
    )
    assert said, "the README no longer quotes the median table"
    got = (p50[("pythia-160m-deduped", "ov", 23000)], p50[("pythia-160m-deduped", "ov", 43000)],
           p50[("pythia-2.8b-deduped", "mlp_out", 23000)], p50[("pythia-2.8b-deduped", "mlp_out", 43000)])  # fmt: skip
    assert [f"{v:.3f}".lstrip("0") for v in got] == list(said.groups())
    assert (result.parent / "layer_percentiles.png").stat().st_size > 20_000  # Figure 1


def test_every_command_of_using_it_runs(fresh, tiny_suite, tiny_overrides):
    """In order, in the fresh folder: `suite build` finds the session's tiny suite built (as the README
    says, it is reused), the extractions read five of its checkpoints."""
    shutil.rmtree(fresh / "data", ignore_errors=True)
    shutil.copytree(tiny_suite[1], fresh / "data" / "suites")
    used = run_block(block(RUN_HERE[1]), (*tiny_overrides, *FEWER_CHECKPOINTS))
    failed = {line: code for line, (code, _) in used.items() if code != 0}
    assert not failed, failed
    assert any(line.startswith("layerlake extract executor=ray") for line in used)
    assert (fresh / "sketches.parquet").stat().st_size > 0  # `--output sketches.parquet`, where it was run
    listed = next(
        out for line, (_, out) in used.items() if line.startswith('layerlake sql "select model, layer, per(')
    )
    assert "5 rows" in listed


def test_the_version_block_is_what_version_prints(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LAYERLAKE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    from layerlake import __version__

    assert main(["--version"]) == 0
    printed = capsys.readouterr().out.strip()
    said = block(VERSION_OUTPUT, "").splitlines()[1]
    shape = (
        re.escape(said)
        .replace(re.escape("0.1.0"), r"(\S+)")
        .replace(re.escape("/home/me/layerlake/data"), "(.+)")
    )
    found = re.fullmatch(shape, printed)
    assert found, (said, printed)
    assert found.groups() == (__version__, str(tmp_path / "data"))


def test_the_demo_table_is_what_the_demo_prints():
    """The README's example rows, rendered as the demo renders its first finding (its title, columns and
    number format), give the README's lines."""
    from layerlake.cli.demo import DEMO_FINDINGS, show_finding

    _, _, title, columns = DEMO_FINDINGS[0]
    lines = block(f"     {DEMO_TITLE}", "").splitlines()
    assert lines[-1] == "...", "the README shows some of the demo's rows, then ..."
    cells = [[c.strip() for c in line.strip("│").split("│")] for line in lines if line.startswith("│")]
    assert cells, "no rows in the README's demo table"
    types = (str, str, int, int, float, float)
    table = pa.table(
        {c: [t(row[i]) for row in cells] for i, (c, t) in enumerate(zip(columns, types, strict=True))}
    )
    out = io.StringIO()
    show_finding(table, title, columns, Console(file=out, width=120, color_system=None))
    shown = [line.rstrip() for line in out.getvalue().splitlines()]
    assert shown[: len(lines) - 1] == lines[:-1]
