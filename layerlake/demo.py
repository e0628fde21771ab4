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

# (recipe, parameters, title, columns printed): the findings the demo prints and plots.
DEMO_FINDINGS = (
    (
        "stabilised_share",
        {"threshold": 0.9, "by_fraction": 0.5},
        "Layers stabilised by half of training (CKA to the final checkpoint stays >= 0.9 from then on)",
        ("model", "site", "n_layers", "n_stabilised", "share_stabilised", "median_stabilisation_fraction"),
    ),
    (
        "rank_and_convergence",
        {"threshold": 0.9, "k": "rank"},
        "Rank and convergence: Spearman correlation of a layer's final PER with its stabilisation "
        "(negative: higher-rank layers settle earlier)",
        ("model", "site", "tensor", "n_layers", "spearman", "agreement"),
    ),
    ("layer_percentiles", {}, None, ()),
    ("convergence", {}, None, ()),
    ("rank_trajectories", {"matrices": ["ov", "dense_4h_to_h"], "k": "rank"}, None, ()),
)


def print_rows(console: Console, title: str, table, columns: tuple[str, ...], limit: int = 40) -> None:
    table = table.select(list(columns))
    rich_table = Table(title=title)
    for name in columns:
        rich_table.add_column(name.replace("_", " "), overflow="fold")
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
    for name, params, title, columns in DEMO_FINDINGS:
        table = run_recipe(con, name, params | {"suite": settings.suite.name})
        if title:
            print_rows(console, title, table, columns)
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
        '\nQuery the warehouse yourself: layerlake sql "select model, layer, site, step, n, d from activation_stats limit 5"'
    )
    return 0
