"""``layerlake demo``: the whole job on the embedded suite, offline, in a few minutes.

1. build (or reuse) the embedded suite and print it;
2. extract every checkpoint into the warehouse (``executor=ray`` in ``make demo``);
3. run the study's findings as SQL recipes, print them, and write their plots.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console

from layerlake.conf.schema import Config
from layerlake.core.render import print_table

log = logging.getLogger(__name__)

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


def run_findings(settings: Config, console: Console) -> list[Path]:
    from layerlake import warehouse
    from layerlake.queries import run_recipe
    from layerlake.queries.plots import plot

    out_dir = Path(settings.paths.runs) / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    con = warehouse.connect(settings.paths.warehouse)
    plots = []
    for name, params, title, columns in DEMO_FINDINGS:
        table = run_recipe(con, name, params | {"suite": settings.suite.name})
        if title:
            print_table(table.select(list(columns)), title, console, max_rows=40, hoist_constants=False)
        path = plot(name, table, out_dir / f"{name}.png")
        log.info("finding %s: %d rows%s", name, table.num_rows, f", plot {path}" if path else "")
        if path is not None:
            plots.append(path)
    return plots


def run(settings: Config) -> int:
    from layerlake.etl.command import print_report
    from layerlake.etl.driver import run_extract
    from layerlake.etl.suite.command import build, show

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
        console.print(f"plot: {path}", markup=False)
    console.print(
        '\nQuery the warehouse yourself: layerlake sql "select model, layer, site, step, n, d from activation_stats limit 5"',
        markup=False,
    )
    return 0
