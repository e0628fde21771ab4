"""``layerlake demo``: the whole job on the embedded suite, offline, in a few minutes.

1. build (or reuse) the embedded suite and print it;
2. extract every checkpoint into the warehouse (``executor=ray`` in ``make demo``);
3. run the study's findings as SQL recipes, print them, and write their plots;
4. train a second seed of the smallest model through the tracker (its rows taken from the live model at
   each checkpoint step) and print the cross-seed finding: do two seeds reach the same representations,
   and do their layers stabilise alike?
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import pyarrow as pa
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
        {"threshold": 0.9},
        "Rank and convergence: Spearman correlation of a layer's final PER with its stabilisation "
        "(negative: higher-rank layers settle earlier)",
        ("model", "site", "tensor", "n_layers", "spearman", "agreement"),
    ),
    ("layer_percentiles", {}, None, ()),
    ("convergence", {}, None, ()),
    ("rank_trajectories", {"matrices": ["ov", "dense_4h_to_h"]}, None, ()),  # PER's k: the default, as the UI
)


def suite_runs_only(table, settings: Config):
    """The rows of the suite's own runs (``<suite>.<model>``): other runs of its models (a second
    seed, a sweep) are compared in step 4, not mixed into the study's findings."""
    import pyarrow.compute as pc

    from layerlake.etl.task import extract_run_id

    if "run_id" not in table.column_names:
        return table
    own = [extract_run_id(settings.suite.name, m.name) for m in settings.suite.models]
    return table.filter(pc.is_in(table["run_id"], value_set=pa.array(own)))


def show_finding(table: pa.Table, title: str, columns: tuple[str, ...], console: Console) -> None:
    """A finding's ``columns`` as the demo prints them (the README's example table is this output)."""
    print_table(table.select(list(columns)), title, console, max_rows=40, hoist_constants=False)


def run_findings(settings: Config, console: Console) -> list[Path]:
    from layerlake import warehouse
    from layerlake.queries import run_recipe
    from layerlake.queries.figures import draw

    out_dir = Path(settings.paths.runs) / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    con = warehouse.connect(settings.paths.warehouse)
    plots = []
    for name, params, title, columns in DEMO_FINDINGS:
        table = suite_runs_only(run_recipe(con, name, params | {"suite": settings.suite.name}), settings)
        if title:
            show_finding(table, title, columns, console)
        path = draw(name, params | {"suite": settings.suite.name}, table, out_dir / f"{name}.png")
        log.info("finding %s: %d rows%s", name, table.num_rows, f", plot {path}" if path else "")
        if path is not None:
            plots.append(path)
    return plots


def second_seed(settings: Config) -> Config | None:
    """The settings that train the smallest selected model of a local suite again with the next seed,
    through the tracker, as the run ``<suite>.<model>.seed<N>``; None for a hub suite."""
    from layerlake.etl.suite.build import selected_models

    suite = settings.suite
    if suite.source != "local":
        return None
    model = min(  # the smallest Pythia-style model: the study's family
        selected_models(suite, settings.models),
        key=lambda m: (m.architecture != "gpt_neox", m.n_layers * m.d_model**2, m.name),
    )
    seed = suite.train.seed + 1
    train = dataclasses.replace(suite.train, seed=seed, variant=f"seed{seed}", snapshots=True)
    return dataclasses.replace(settings, suite=dataclasses.replace(suite, train=train), models=[model.name])


def cross_seed_findings(settings: Config, console: Console) -> list[Path]:
    """Between the suite's run of the model and its second seed: CKA at the same step (per site, over
    layers), the layers' stabilisation across the two, and each run's loss beside its convergence."""
    from layerlake import warehouse
    from layerlake.etl.task import extract_run_id
    from layerlake.queries import run_recipe
    from layerlake.queries.figures import draw

    suite, (model,) = settings.suite, settings.models
    first = extract_run_id(suite.name, model)
    second = f"{first}.{suite.train.variant}"
    con = warehouse.connect(settings.paths.warehouse)
    scope = {"suite": suite.name, "models": [model]}
    similarity = run_recipe(con, "run_similarity", scope | {"run_a": first, "run_b": second})
    con.register("similarity", similarity)
    summary = con.sql(
        """select site, step, count(*) as layers, min(cka) as min_cka, median(cka) as median_cka,
                  max(cka) as max_cka
           from similarity
           where step in (select unnest([min(step) filter (where step > 0), quantile_disc(step, 0.5), max(step)])
                          from similarity)
           group by site, step order by site, step"""
    ).to_arrow_table()
    print_table(
        summary, f"Do two seeds of {model} reach the same representations? CKA between {first} and {second} "
        "at the same step (over layers; the paper's biased CKA)", console, max_rows=40, hoist_constants=False,
    )  # fmt: skip
    across = run_recipe(con, "stabilisation_across_runs", scope | {"threshold": 0.9})
    columns = ["site", "layer", "n_runs", "n_never", "min_stabilisation_fraction",
               "mean_stabilisation_fraction", "max_stabilisation_fraction"]  # fmt: skip
    shown = across.select(columns).rename_columns([c.replace("_stabilisation", "") for c in columns])
    print_table(
        shown, f"Stabilisation of {model}'s layers across its seeds (fraction of training "
        "after which CKA to the run's final checkpoint stays >= 0.9)", console, max_rows=40, hoist_constants=False,
    )  # fmt: skip
    out_dir = Path(settings.paths.runs) / "demo"
    pairs = scope | {"run_a": first, "run_b": second}
    plots = [
        draw("run_similarity", pairs, similarity, out_dir / "run_similarity.png"),
        draw("stabilisation_across_runs", scope | {"threshold": 0.9}, across, out_dir / "stabilisation_across_runs.png"),
        draw("loss_and_convergence", scope, run_recipe(con, "loss_and_convergence", scope), out_dir / "loss_and_convergence.png"),
    ]  # fmt: skip
    return [p for p in plots if p is not None]


def run(settings: Config) -> int:
    from layerlake.etl.command import print_report
    from layerlake.etl.driver import run_extract
    from layerlake.etl.progress import format_duration
    from layerlake.etl.suite.command import build, show

    console = Console()
    started = time.monotonic()

    def stage(title: str) -> None:  # in a log file too, each stage says when it began
        elapsed = time.monotonic() - started
        console.rule(f"{title} (at {format_duration(elapsed)})" if elapsed >= 1 else title)

    stage("1. the embedded suite")
    code = build(settings)
    if code:
        return code
    show(settings)
    stage("2. extraction")
    report = run_extract(settings)
    print_report(report, settings.paths.warehouse, console)
    if not report.ok:
        return 130 if report.interrupted else 1
    stage("3. findings")
    plots = run_findings(settings, console)
    again = second_seed(settings)
    if again is not None:
        stage(f"4. a second seed of {again.models[0]}, tracked while it trains")
        code = build(again)
        if code:
            return code
        plots += cross_seed_findings(again, console)
    for path in plots:
        console.print(f"plot: {path}", markup=False, soft_wrap=True)
    console.print(f"demo done in {format_duration(time.monotonic() - started)}", markup=False)
    console.print(
        '\nQuery the warehouse yourself: layerlake sql "select model, layer, site, step, n, d from activation_stats limit 5"',
        markup=False,
    )
    return 0
