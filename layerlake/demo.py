"""``layerlake demo``: the whole job on the embedded suite, offline, in a few minutes.

1. build (or reuse) the embedded suite and print it;
2. extract every checkpoint into the warehouse (``executor=ray`` in ``make demo``);
3. run the study's findings as SQL recipes, print them, and write their plots.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from conf.schema import Config

# (recipe, parameters, title): the findings the demo prints and plots.
DEMO_FINDINGS = (
    ("stabilisation_summary", {}, "Share of layers stabilised (CKA to the final checkpoint stays >= 0.9)"),
    ("rank_convergence", {}, "Rank and convergence: does a layer's PER predict when it stabilises?"),
    ("layer_percentiles", {}, None),
    ("convergence_heatmap", {}, None),
    ("rank_trajectories", {}, None),
)


def print_rows(console: Console, title: str, table, limit: int = 30) -> None:
    rich_table = Table(title=title)
    for name in table.column_names:
        rich_table.add_column(name)
    for row in table.slice(0, limit).to_pylist():
        rich_table.add_row(*(_fmt(v) for v in row.values()))
    console.print(rich_table)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


def run_findings(settings: Config, console: Console) -> list[Path]:
    import warehouse
    from queries import run_recipe
    from queries.plots import plot

    out_dir = Path(settings.paths.runs) / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    con = warehouse.connect(settings.paths.warehouse)
    plots = []
    for name, params, title in DEMO_FINDINGS:
        table = run_recipe(con, name, params | {"suite": settings.suite.name})
        if title:
            print_rows(console, title, table)
        path = plot(name, table, out_dir / f"{name}.png")
        if path is not None:
            plots.append(path)
    return plots


def run(settings: Config) -> int:
    from etl.command import print_report
    from etl.driver import run_extract
    from etl.suite.command import build, show

    console = Console()
    console.rule("1. the embedded suite")
    code = build(settings)
    if code:
        return code
    show(settings)
    console.rule("2. extraction")
    report = run_extract(settings)
    print_report(report, settings.paths.warehouse, console)
    if not report.ok:
        return 1
    console.rule("3. findings")
    plots = run_findings(settings, console)
    for path in plots:
        console.print(f"plot: {path}")
    console.print(
        f"\nQuery the warehouse yourself: layerlake sql \"select model, layer, site, step, n, d from activation_stats limit 5\""
    )
    return 0
