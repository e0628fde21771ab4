"""The one plotting layer: a recipe's result as a Vega-Lite figure. The web UI draws the spec in the
browser; ``layerlake query`` saves the same spec as PNG (300 dpi), SVG or PDF through vl-convert, so a
figure looks the same in both.

A recipe's header says what to draw (``-- plot:``) and the title in words (``-- title:``)::

    bands    the paper's Figure 1: p10-p90 and p25-p75 bands and the median per step
    heatmap  value over an x by y grid (layer x checkpoint, checkpoint x checkpoint, layer x layer)
    lines    y over x, one line per ``line`` value; ``y=per|erank|stable_rank`` offers a choice
    bars     value per x (stabilisation per layer); a layer that never stabilised is marked as such
    ranges   mean and min-max over runs per x, with how many runs never stabilised
    twin     one series on the left axis (``left=$scalar``: the parameter's value), the rest on the right

``panels`` names the columns that split the figure: the first gives the rows of the grid, the rest the
columns (wrapped four to a row when they take many values). What every figure shares: a title that
names the measure and a subtitle with the estimator, kernel, reference step and threshold used; axis
labels in words (``LABELS``); training steps on a log scale where the stored steps are log-spaced, with
the stored step numbers as ticks; one legend, under the panels; the Okabe-Ito palette and viridis, both
readable with colour-blind vision.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from layerlake.core.errors import ParameterError
from layerlake.core.render import json_rows
from layerlake.queries.errors import RecipeError

SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"
KINDS = ("bands", "heatmap", "lines", "bars", "ranges", "twin")
FORMATS = ("png", "svg", "pdf")
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442")
NEVER_COLOUR = "#D55E00"  # vermillion: a layer that never stabilised
WIDTH, HEIGHT = 240, 170  # one panel, in CSS pixels
MAX_PANELS = 36
MAX_COLUMNS = 4
MAX_ROWS = 40_000  # points drawn (whole panels); tables and downloads hold every row
# Attention before MLP, as in the paper's figures; unknown sites follow in name order.
SITE_ORDER = ("ov", "attn_out", "qkv_last_third", "attention", "mlp_out", "mlp", "resid_post")
STEP_COLUMNS = ("step", "step_a", "step_b")
LABELS = {
    "step": "training step",
    "step_a": "training step",
    "step_b": "training step",
    "layer": "layer",
    "layer_a": "layer of model x",
    "layer_b": "layer of model y",
    "model_a": "model x",
    "model_b": "model y",
    "run_id": "run",
    "run_b": "compared with run",
    "cka": "CKA",
    "per": "PER (effective rank / k)",
    "erank": "effective rank",
    "stable_rank": "stable rank",
    "numerical_rank": "numerical rank",
    "stabilisation_fraction": "stabilisation step / last step",
    "stabilisation_step": "stabilisation step",
    "mean_cka": "mean CKA over checkpoints",
}


def label(column: str) -> str:
    """A column's name in words (``stabilisation_fraction`` -> ``stabilisation step / last step``)."""
    return LABELS.get(column, column.replace("_", " "))


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"heatmap x=step y=layer"`` -> ``("heatmap", {"x": "step", "y": "layer"})``."""
    kind, *options = spec.split()
    return kind, dict(option.split("=", 1) for option in options)


def measures(plot: str) -> list[str]:
    """The columns a figure offers to plot (``y=per|erank|stable_rank``), default first; [] for none."""
    kind, options = parse_spec(plot)
    return options["y"].split("|") if kind == "lines" and "|" in options.get("y", "") else []


def check_measure(recipe: Any, measure: str | None) -> None:
    """A ``ParameterError`` unless ``measure`` is None or one the recipe's figure offers."""
    choices = measures(recipe.plot)
    if measure is not None and measure not in choices:
        offered = f"choose one of {', '.join(choices)}" if choices else "leave plot.measure out"
        raise ParameterError(
            f"recipe {recipe.name!r} cannot plot measure {measure!r}"
            + ("" if choices else ": its figure offers no choice of measure"),
            fix=f"{offered} (plot.measure=... on the command line)",
        )


def recipe_figure(
    recipe: Any,
    params: dict[str, Any],
    table: pa.Table,
    measure: str | None = None,
    layers: pa.Table | None = None,
    window: tuple[int, int, int, int] | None = None,
) -> dict[str, Any] | None:
    """The Vega-Lite spec of ``recipe``'s figure over its result ``table`` (run with the bound
    ``params``); None when the recipe draws nothing or the result is empty. ``measure`` picks one of
    ``measures(recipe.plot)``; ``layers`` (a bands figure only): the per-layer rows behind the bands,
    drawn as points whose tooltip names the layer. ``window``: ``(width, height, page)`` of the UI's
    window in CSS pixels and the most panels across it may hold (0: as many as fit): the panels that fit
    it, page ``page`` of them (``usermeta.paging`` says which and how many pages, ``usermeta.columns``
    how many across); without it, a file's first ``MAX_PANELS`` panels."""
    kind, options = parse_spec(recipe.plot)
    if kind == "none" or table.num_rows == 0:
        return None
    if kind not in KINDS:
        raise RecipeError(
            f"recipe {recipe.name!r} asks for unknown plot kind {kind!r}", fix=f"use one of {KINDS} or none"
        )
    check_measure(recipe, measure)
    choices = measures(recipe.plot)
    if choices:
        options["y"] = measure or choices[0]
    rows = json_rows(table)
    if layers is not None:
        rows += json_rows(layers)
    if params.get("group_by") and "group_value" in table.column_names:  # a panel says which key: lr=0.001
        for r in rows:
            r["group_value"] = f"{params['group_by']}={r.get('group_value')}"
    if "left" in options and options["left"].startswith("$"):
        options["left"] = str(params.get(options["left"][1:]))
    cell = (options["x"], options["y"]) if kind == "heatmap" else None
    square = kind == "heatmap" and options["x"].rstrip("_ab") == options["y"].rstrip("_ab")
    fit = None if window is None else fit_window(*window, square=square, twin=kind == "twin")
    facet, panels_note, paging = _facet(rows, options.get("panels", ""), table.column_names, cell, fit)
    if len(rows) > MAX_ROWS:  # one panel larger than the budget: its first rows
        panels_note = [f"first {MAX_ROWS:,} of {len(rows):,} rows drawn: choose fewer models= or sites="]
        del rows[MAX_ROWS:]
    layer = DRAW[kind](rows, options, table.column_names)
    spec: dict[str, Any] = {
        "$schema": SCHEMA,
        "title": {
            "text": fill_title(recipe.title, params, table, label(options.get("y", ""))),
            "subtitle": subtitle(params, table) + panels_note,
            "anchor": "start",
        },
        "data": {"values": rows},
        "config": CONFIG,
    }
    # a matrix of a thing against itself (checkpoint x checkpoint, layer x layer) is drawn square
    width, height = (300, 300) if square else (WIDTH, HEIGHT)
    if facet is None:
        spec.update(width=width + 120, height=height + 60, layer=layer)
    else:
        spec.update(facet)
        spec["spec"] = {"width": width, "height": height, "layer": layer}
        # models have different numbers of layers: a panel's layer axis holds its own model's layers
        independent = "independent" if kind in ("heatmap", "bars", "ranges") else "shared"
        y = "independent" if kind in ("heatmap", "twin") else "shared"
        spec["resolve"] = {"scale": {"x": independent, "y": y}}
    if kind == "twin":  # the left and the right axis each have their own scale
        (spec.get("spec") or spec)["resolve"] = {"scale": {"y": "independent"}}
    used = drawn_fields(spec)
    spec["data"]["values"] = [{k: v for k, v in row.items() if k in used} for row in rows]
    if window is not None:
        spec["usermeta"] = {"paging": paging, "columns": fit.columns} if paging else {"columns": 1}
    return spec


_DATUM_FIELD = re.compile(r"datum(?:\.(\w+)|\[\s*['\"]([^'\"]+)['\"]\s*\])")


def drawn_fields(spec: Any) -> set[str]:
    """The data fields a Vega-Lite spec reads: every ``"field"`` and every ``datum.x`` / ``datum['x']`` of
    its expressions. The figure's rows keep only these: the rank trajectories of the full-study warehouse
    carry 16 columns, of which their figure draws 9 (12.5 -> 6 MB to send)."""
    found: set[str] = set()
    if isinstance(spec, dict):
        for key, value in spec.items():
            if key == "field" and isinstance(value, str):
                found.add(value)
            elif key != "data":
                found |= drawn_fields(value)
    elif isinstance(spec, list):
        for value in spec:
            found |= drawn_fields(value)
    elif isinstance(spec, str):
        found |= {a or b for a, b in _DATUM_FIELD.findall(spec)}
    return found


CONFIG = {
    "font": "Liberation Sans, Arial, Helvetica, sans-serif",
    "title": {"fontSize": 15, "subtitleFontSize": 11, "subtitleColor": "#444", "offset": 12},
    "axis": {"labelFontSize": 10, "titleFontSize": 11, "titleFontWeight": "normal"},
    "header": {"labelFontSize": 11, "titleFontSize": 11, "titleFontWeight": "normal"},
    "legend": {"orient": "bottom", "direction": "horizontal", "titleFontWeight": "normal", "labelLimit": 260},
    "range": {"category": list(OKABE_ITO)},
}


def fill_title(template: str, params: dict[str, Any], table: pa.Table, measure: str) -> str:
    """The recipe's title with ``{name}`` filled by the parameter's value, or, when the parameter is
    null (meaning "the default"), by the value the result holds; ``{measure}`` is the plotted measure."""
    values: dict[str, str] = {"measure": measure[:1].upper() + measure[1:]}
    for _, field, _, _ in string.Formatter().parse(template):
        if not field or field in values:
            continue
        value = params.get(field)
        if value is None and field in table.column_names:
            held = sorted({v for v in table.column(field).to_pylist() if v is not None}, key=natural_key)
            value = ", ".join(map(str, held)) if held else "?"
        values[field] = "all" if value is None else str(value)
    return template.format_map(values)


def subtitle(params: dict[str, Any], table: pa.Table) -> list[str]:
    """How the numbers were made, in words: estimator and kernel, reference step, threshold, source."""
    parts = []
    imported = params.get("source") not in (None, "computed")
    if imported:  # values computed elsewhere: no estimator or kernel of ours applies
        parts.append(f"source: {params['source']} (imported values)")
    elif "estimator" in params:
        cka = f"{params['estimator']} CKA estimator, {params['kernel']} kernel"
        parts.append(cka + (", per attention head" if params.get("per_head") else ""))
    if "reference_step" in params:
        if params["reference_step"] is not None:
            parts.append(f"reference checkpoint: step {params['reference_step']}")
        else:
            column = next((c for c in ("reference_step", "final_step") if c in table.column_names), None)
            held = sorted(set(table.column(column).drop_null().to_pylist())) if column else []
            shown = f" ({', '.join(map(str, held[:6]))}{' ...' if len(held) > 6 else ''})" if held else ""
            parts.append(f"reference checkpoint: each model's last step{shown}")
    if "threshold" in params:
        parts.append(f"stabilised: CKA stays at or above {params['threshold']} at every later checkpoint")
    if "k" in params and "per" in table.column_names:
        parts.append(f"PER's k: {params['k'].replace('_', ' ')}")
    return [" · ".join(parts[:2]), " · ".join(parts[2:])] if len(parts) > 2 else [" · ".join(parts)]


def natural_key(value: object) -> tuple:
    """Sort key: sites in the paper's order, model names by size (70m < 160m < 1.4b; s < m < l), numbers
    inside names by value (seed2 < seed10)."""
    if value is None:
        return (0, 0.0, ())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (4, float(value), ())
    text = str(value)
    if text in SITE_ORDER:
        return (1, float(SITE_ORDER.index(text)), _digits(text))
    size = re.search(r"(\d+(?:\.\d+)?)([mbk])\b", text, re.IGNORECASE)
    if size:
        scale = {"k": 1e3, "m": 1e6, "b": 1e9}[size[2].lower()]
        return (2, float(size[1]) * scale, _digits(text))
    suffix = re.search(r"-(xs|xl|s|m|l)(?![\w-])", text, re.IGNORECASE)
    if suffix:  # a family of sizes (embedded-s, -m, -l) together, then the next family (embedded-gpt2-s)
        size = ("xs", "s", "m", "l", "xl").index(suffix[1].lower())
        return (3, 0.0, (*_digits(text[: suffix.start()]), (2, size, ""), *_digits(text)))
    return (5, 0.0, _digits(text))


def _digits(text: str) -> tuple:
    """``text`` as parts that sort numbers by value: ``seed10`` -> ((1, 0, 'seed'), (0, 10, ''))."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text) if p)


# -- panels --------------------------------------------------------------------------------------


# A model's column, and the column naming its run: a model with several runs (seeds) gets a panel per run.
RUN_OF = {"model": "run_id", "model_a": "run_a", "model_b": "run_b"}
# What else may tell two rows of one heatmap cell apart (they would be drawn over each other).
OVERLAID = (
    "run_id",
    "run_a",
    "run_b",
    "source",
    "probe_id",
    "head",
    "tensor",
    "matrix",
    "estimator",
    "kernel",
)


@dataclass(frozen=True)
class Fit:
    """What the UI's window holds: ``columns`` panels across, ``panels`` in all per page; ``page`` is the
    one to draw (0-based). Files draw the first ``MAX_PANELS`` in ``MAX_COLUMNS`` columns instead."""

    columns: int = MAX_COLUMNS
    panels: int = MAX_PANELS
    page: int = 0


def fit_window(
    width: int, height: int, page: int = 0, most: int = 0, square: bool = False, twin: bool = False
) -> Fit:
    """The panels a window of ``width`` x ``height`` CSS pixels shows without scrolling sideways (at most
    ``most`` across when given), and about as many rows as fit its height (at least one; a figure's
    title and legend take ~260 px). Beside its panel, each column takes its axis and spacing (~45 px; a
    twin figure's right axis ~110 more), the figure its left axis and legend (~110 px, more for a long
    legend: the page asks again with fewer columns when the figure drew wider than its box)."""
    panel_w, panel_h = (300, 300) if square else (WIDTH, HEIGHT)
    columns = max(1, min(most or MAX_COLUMNS, MAX_COLUMNS, (width - 110) // (panel_w + 45 + 110 * twin)))
    rows = max(1, min(6, (height - 260) // (panel_h + 75)))
    return Fit(columns, columns * rows, max(0, page))


def _facet(
    rows: list[dict],
    spec: str,
    columns: list[str],
    cell: tuple[str, str] | None = None,
    fit: Fit | None = None,
) -> tuple[dict[str, Any] | None, list[str], dict[str, int]]:
    """The facet of ``panels=a,b,c``: rows by ``a``, columns by ``b · c`` (wrapped when many), in the
    natural order; suite and source join the rows when the result holds several. A model with several
    runs is split into a panel per run (``RUN_OF``); for a heatmap (``cell``: its x and y), any column of
    ``OVERLAID`` that would otherwise put two rows in one cell joins the panels too, so nothing is
    drawn over anything else. Marks each row with its panel fields and keeps the rows of the panels
    drawn: with ``fit`` (the UI), one page of them, else the first ``MAX_PANELS``; returns the facet,
    a note for the subtitle and the paging (``page``, ``pages``, ``panels``)."""
    wanted = [c for c in spec.split(",") if c in columns and any(r.get(c) is not None for r in rows)]
    prefix, titles = dict(PANEL_PREFIX), {}
    for model, run in RUN_OF.items():
        if model in wanted and run in columns and _several_runs(rows, model, run):
            wanted[wanted.index(model)] = run  # a panel per run (seed), named as its model's panel was
            prefix[run] = PANEL_PREFIX.get(model, "")
            titles[run] = "run" if model == "model" else f"run of {label(model)}"
    varying = [
        c
        for c in ("suite", "source")
        if c in columns and c not in wanted and len({r.get(c) for r in rows}) > 1
    ]
    if cell is not None:
        wanted += _overlaid(rows, [*varying, *wanted], cell, columns)
    row_cols, col_cols = [*varying, *wanted[:1]], wanted[1:]
    if not row_cols and not col_cols:
        return None, [], {}
    names: dict[tuple, tuple[str, str, str]] = {}  # a panel's three names, made once per panel
    for r in rows:
        key = tuple(r.get(c) for c in (*row_cols, *col_cols))
        if key not in names:
            row = " · ".join(_named(c, r.get(c), prefix) for c in row_cols if r.get(c) is not None)
            column = " · ".join(_named(c, r.get(c), prefix) for c in col_cols if r.get(c) is not None)
            names[key] = (row, column, " · ".join(p for p in (row, column) if p))
        r["panel_row"], r["panel_column"], r["panel"] = names[key]
    order = sorted(
        {(r["panel_row"], r["panel_column"], r["panel"]) for r in rows if r["panel"]},
        key=lambda k: (_order(k[0], row_cols), _order(k[1], col_cols)),
    )
    fit = fit or Fit()
    grid = bool(col_cols) and len({k[1] for k in order}) <= fit.columns
    kept, note, paging = _page(rows, order, grid, fit)
    rows[:] = [r for r in rows if r["panel"] in kept or not r["panel"]]
    order = [k for k in order if k[2] in kept]
    max_columns = fit.columns
    header = {"labelAngle": 0, "labelAlign": "left", "labelOrient": "top", "labelFontWeight": "bold"}
    row_values = list(dict.fromkeys(k[0] for k in order))
    col_values = list(dict.fromkeys(k[1] for k in order))
    if not grid:
        facet = {
            "facet": {"field": "panel", "type": "nominal", "title": None, "header": header,
                      "sort": [k[2] for k in order]},
            "columns": min(max_columns, len(order)),
        }  # fmt: skip
    else:
        facet = {
            "facet": {
                "row": {"field": "panel_row", "type": "nominal", "sort": row_values,
                        "title": " · ".join(titles.get(c, label(c)) for c in row_cols), "header": header},
                "column": {"field": "panel_column", "type": "nominal", "sort": col_values,
                           "title": " · ".join(titles.get(c, label(c)) for c in col_cols), "header": header},
            }
        }  # fmt: skip
        if not row_cols:
            facet["facet"].pop("row")
    return facet, note, paging


def _page(
    rows: list[dict], order: list[tuple[str, str, str]], grid: bool, fit: Fit
) -> tuple[set[str], list[str], dict[str, int]]:
    """The panels of ``order`` to draw: page ``fit.page`` of ``fit.panels`` panels (whole rows of a grid),
    within ``MAX_ROWS`` points; the subtitle's note and the paging."""
    sizes: dict[str, int] = {}
    for r in rows:
        sizes[r["panel"]] = sizes.get(r["panel"], 0) + 1
    if grid:  # whole rows of the grid per page
        row_values = list(dict.fromkeys(k[0] for k in order))
        across = len({k[1] for k in order})
        per_page = max(1, fit.panels // across)
        pages = [set(row_values[i : i + per_page]) for i in range(0, len(row_values), per_page)]
        groups = [[k for k in order if k[0] in chosen] for chosen in pages]
    else:
        groups = [order[i : i + fit.panels] for i in range(0, len(order), fit.panels)]
    page = min(fit.page, len(groups) - 1)
    kept, total = [], 0
    for key in groups[page]:  # whole panels, within MAX_ROWS points
        if kept and total + sizes[key[2]] > MAX_ROWS:
            break
        kept.append(key[2])
        total += sizes[key[2]]
    first = sum(len(g) for g in groups[:page])
    paging = {
        "page": page,
        "pages": len(groups),
        "panels": len(order),
        "first": first + 1,
        "last": first + len(kept),
    }
    note = []
    if len(kept) < len(order) and fit == Fit():  # a file: the first page only
        note = [
            f"first {len(kept)} of {len(order)} panels drawn: narrow the query (models=, sites=, matrices= ...) for the others"
        ]
    elif len(kept) < len(order):
        note = [f"panels {first + 1}-{first + len(kept)} of {len(order)} (page {page + 1} of {len(groups)})"]
    return set(kept), note, paging


def _named(column: str, value: Any, prefix: dict[str, str] | None = None) -> str:
    """A panel's value, prefixed where the value alone would be ambiguous (which model is on x)."""
    prefix = PANEL_PREFIX if prefix is None else prefix
    return f"{prefix[column]}{value}" if prefix.get(column) else str(value)


PANEL_PREFIX = {"model_a": "x: ", "model_b": "y: ", "run_b": "vs "}


def _several_runs(rows: list[dict], model: str = "model", run: str = "run_id") -> bool:
    runs: dict[Any, set] = {}
    for r in rows:
        runs.setdefault(r.get(model), set()).add(r.get(run))
    return any(len(v) > 1 for v in runs.values())


def _overlaid(rows: list[dict], panels: list[str], cell: tuple[str, str], columns: list[str]) -> list[str]:
    """The columns of ``OVERLAID`` to add to ``panels`` so that no two rows share a panel and a cell."""
    added: list[str] = []
    for column in [c for c in OVERLAID if c in columns and c not in panels]:
        keys = [tuple(r.get(c) for c in (*panels, *added, *cell)) for r in rows]
        if len(set(keys)) == len(keys):
            break
        if len({r.get(column) for r in rows}) > 1:
            added.append(column)
    return added


def _order(text: str, columns: list[str]) -> tuple:
    parts = [p.split(": ", 1)[-1].removeprefix("vs ") for p in text.split(" · ")]
    return tuple(natural_key(int(p) if p.lstrip("-").isdigit() else p) for p in parts)


# -- axes ----------------------------------------------------------------------------------------


def log_spaced(steps: list[int]) -> bool:
    """Steps are log-spaced when they span two decades or more and the first 1% of the range holds at
    least 5% of them (Pythia: 0, 1, 2, 4, ..., 512, 1000, 2000, ...; not a run logged every 100 steps)."""
    positive = [s for s in steps if s > 0]
    if len(positive) < 4 or max(positive) / min(positive) < 100:
        return False
    early = sum(1 for s in steps if s <= max(steps) / 100)
    return early >= 0.05 * len(steps)


def step_ticks(steps: list[int], log: bool, width: float = WIDTH, gap: float = 22.0) -> list[int]:
    """Stored steps to label: the last and the first always, and between them, walking down, each at
    least ``gap`` pixels from the one labelled before it on the axis's scale."""
    steps = sorted(set(steps))
    if not steps:
        return []

    def where(s: float) -> float:
        return math.log1p(s) if log else float(s)

    low, high = where(steps[0]), where(steps[-1])
    scale = width / (high - low) if high > low else 0.0
    kept = [steps[-1]]
    for s in reversed(steps[:-1]):
        if (where(kept[-1]) - where(s)) * scale >= gap:
            kept.append(s)
    if len(kept) > 1 and kept[-1] != steps[0]:
        kept[-1] = steps[0]  # the first step instead of the lowest kept: further from the rest, so it fits
    return sorted(kept)


def step_axis(field: str, rows: list[dict]) -> dict[str, Any]:
    """A quantitative step axis: symlog (step 0 stays on it) when the steps are log-spaced, ticks at
    stored steps, full numbers (143,000), labels slanted so long ones never collide."""
    steps = sorted({int(r[field]) for r in rows if r.get(field) is not None})
    log = log_spaced(steps)
    # a few stored steps: label those; many evenly spaced ones (a logged loss): round numbers, all real steps
    ticks = step_ticks(steps, log) if log or len(steps) <= 30 else None
    return {
        "field": field,
        "type": "quantitative",
        "title": label(field) + (" (log scale)" if log else ""),
        "scale": {"type": "symlog", "constant": 1, "nice": False} if log else {"nice": False},
        "axis": {"format": ",d", "labelAngle": -40, "labelAlign": "right", "grid": True,
                 **({"values": ticks, "labelOverlap": False} if ticks is not None else {"tickCount": 6})},
    }  # fmt: skip


def ordinal_axis(field: str, rows: list[dict], vertical: bool = False) -> dict[str, Any]:
    """One band per stored value (a heatmap's checkpoints or layers); at most ~10 labels, the first and
    the last always among them."""
    values = sorted({r[field] for r in rows if r.get(field) is not None}, key=natural_key)
    stride = max(1, math.ceil(len(values) / 10))
    shown = values[::stride]
    if values and shown[-1] != values[-1]:
        shown = [*shown[:-1], values[-1]] if len(shown) > 1 and stride > 1 else [*shown, values[-1]]
    step = field in STEP_COLUMNS
    axis: dict[str, Any] = {"values": shown, "labelOverlap": False, "labelAngle": 0}
    if step:
        axis.update(format=",d", formatType="number")
        if not vertical:
            axis.update(labelAngle=-40, labelAlign="right")
    title = label(field) + (" (one band per stored checkpoint)" if step else "")
    return {"field": field, "type": "ordinal", "title": title, "axis": axis,
            "sort": "descending" if vertical else "ascending"}  # fmt: skip


def _number(field: str, title: str | None = None, **more: Any) -> dict[str, Any]:
    return {"field": field, "type": "quantitative", "title": label(field) if title is None else title, **more}


TOOLTIP_LABELS = {"step_a": "step (x)", "step_b": "step (y)", "layer_a": "layer (x)", "layer_b": "layer (y)"}


def _tooltip(fields: list[str], columns: list[str]) -> list[dict[str, Any]]:
    return [
        {"field": f, "title": TOOLTIP_LABELS.get(f, label(f))} for f in dict.fromkeys(fields) if f in columns
    ]


def _context(columns: list[str]) -> list[str]:
    return [c for c in ("run_id", "model", "site", "tensor", "matrix", "head") if c in columns]


# -- marks ---------------------------------------------------------------------------------------


def _heatmap(rows: list[dict], options: dict[str, str], columns: list[str]) -> list[dict]:
    x, y, value = options["x"], options["y"], options["value"]
    values = [r[value] for r in rows if r.get(value) is not None]
    low = min(0.0, min(values)) if values else 0.0
    return [{
        "mark": {"type": "rect", "tooltip": True},
        "encoding": {
            "x": ordinal_axis(x, rows),
            "y": ordinal_axis(y, rows, vertical=True),
            "color": _number(value, scale={"scheme": "viridis", "domain": [low, 1.0]},
                             legend={"direction": "horizontal", "gradientLength": 220}),
            "tooltip": _tooltip([*_context(columns), x, y, value], columns),
        },
    }]  # fmt: skip


def _bands(rows: list[dict], options: dict[str, str], columns: list[str]) -> list[dict]:
    x = options.get("x", "step")
    points = any("layer" in r for r in rows)
    names = ["10th-90th percentile of layers", "25th-75th percentile of layers", "median over layers",
             "one layer (hover for its values)"][: 4 if points else 3]  # fmt: skip
    palette = ["#9ECAE9", "#2F6DB0", "#000000", "#E69F00"][: len(names)]
    colour = {"scale": {"domain": names, "range": palette}, "title": None}
    axis = step_axis(x, rows)
    lows = [r["p10"] for r in rows if r.get("p10") is not None]
    y_scale = {"domain": [min(0.0, min(lows)) if lows else 0.0, 1.0]}
    y_title = "CKA to the reference checkpoint"
    bands = {"filter": "isValid(datum.p50)"}
    layer = [
        {"transform": [bands], "mark": {"type": "area", "opacity": 0.85},
         "encoding": {"x": axis, "y": _number("p10", y_title, scale=y_scale), "y2": {"field": "p90"},
                      "color": {"datum": names[0], **colour}}},
        {"transform": [bands], "mark": {"type": "area", "opacity": 0.9},
         "encoding": {"x": axis, "y": {"field": "p25", "type": "quantitative"}, "y2": {"field": "p75"},
                      "color": {"datum": names[1], **colour}}},
        {"transform": [bands], "mark": {"type": "line", "strokeWidth": 1.8, "point": {"size": 18}},
         "encoding": {"x": axis, "y": {"field": "p50", "type": "quantitative"},
                      "color": {"datum": names[2], **colour},
                      "tooltip": _tooltip([*_context(columns), x, "p10", "p25", "p50", "p75", "p90",
                                           "n_layers"], columns)}},
    ]  # fmt: skip
    if points:
        layer.append({
            "transform": [{"filter": "isValid(datum.layer)"}],
            "mark": {"type": "point", "size": 14, "opacity": 0.7, "filled": True},
            "encoding": {"x": axis, "y": {"field": "cka", "type": "quantitative"},
                         "color": {"datum": names[3], **colour},
                         "tooltip": [{"field": "layer", "title": "layer"}, {"field": x, "title": label(x)},
                                     {"field": "cka", "title": "CKA"},
                                     *_tooltip(["model", "site", "head"], [*columns, "model", "site"])]},
        })  # fmt: skip
    return layer


def _lines(rows: list[dict], options: dict[str, str], columns: list[str]) -> list[dict]:
    x, y, line = options["x"], options["y"], options.get("line")
    encoding: dict[str, Any] = {
        "x": step_axis(x, rows) if x in STEP_COLUMNS else _number(x),
        "y": _number(y, scale={"zero": False}),
        "tooltip": _tooltip([*_context(columns), line or "", x, y], columns),
    }
    detail = [
        {"field": c} for c in (line, "head") if c and c in columns and any(r.get(c) is not None for r in rows)
    ]
    if line:
        held = {r.get(line) for r in rows if r.get(line) is not None}
        numeric = all(isinstance(v, (int, float)) for v in held)
        if numeric and len(held) <= 12:  # a few layers: one legend entry each, in viridis order
            encoding["color"] = {
                "field": line,
                "type": "ordinal",
                "title": label(line),
                "scale": {"scheme": "viridis"},
            }
        elif numeric:  # many layers: a gradient from the first to the last
            encoding["color"] = {
                "field": line,
                "type": "quantitative",
                "title": label(line),
                "scale": {"scheme": "viridis"},
                "legend": {"format": "d", "gradientLength": 200},
            }
        else:
            encoding["color"] = {"field": line, "type": "nominal", "title": label(line)}  # fmt: skip
        encoding["detail"] = detail
    dash = options.get("dash")
    if dash in columns:  # e.g. weights solid, gradients dashed
        held = sorted({r[dash] for r in rows if r.get(dash) is not None}, key=lambda v: (v != "weight", v))
        encoding["strokeDash"] = {"field": dash, "type": "nominal", "title": label(dash),
                                  "scale": {"domain": held, "range": [[1, 0], [5, 3], [1, 2], [8, 2, 2, 2]][: len(held)]},
                                  # the legend draws each dash as a dark stroke: the colour legend is the layers'
                                  "legend": {"symbolType": "stroke", "symbolStrokeWidth": 2, "symbolSize": 400,
                                             "encode": {"symbols": {"update": {
                                                 "stroke": {"value": "#444444"}, "fill": {"value": "transparent"}}}}}}  # fmt: skip
    return [{"mark": {"type": "line", "strokeWidth": 1.4, "point": {"size": 10}}, "encoding": encoding}]


def _bars(rows: list[dict], options: dict[str, str], columns: list[str]) -> list[dict]:
    x, value = options["x"], options["value"]
    names = [f"{label(value)} (a layer that stabilised)", "never stabilised"]
    colour = {"scale": {"domain": names, "range": ["#0072B2", NEVER_COLOUR]}, "title": None}
    tooltip = _tooltip(
        [*_context(columns), x, value, "stabilisation_step", "final_step", "mean_cka"], columns
    )
    return [
        {"transform": [{"filter": f"isValid(datum[{value!r}])"}], "mark": "bar",
         "encoding": {"x": ordinal_axis(x, rows), "y": _number(value, scale={"domain": [0, 1.1]}),
                      "color": {"datum": names[0], **colour}, "tooltip": tooltip}},
        {"transform": [{"filter": f"!isValid(datum[{value!r}])"}],
         "mark": {"type": "point", "shape": "cross", "size": 90, "filled": True, "angle": 45},
         "encoding": {"x": ordinal_axis(x, rows), "y": {"datum": 1.05}, "color": {"datum": names[1], **colour},
                      "tooltip": tooltip}},
    ]  # fmt: skip


def _ranges(rows: list[dict], options: dict[str, str], columns: list[str]) -> list[dict]:
    x, value = options["x"], options["value"]
    names = ["mean over runs", "min to max over runs", "runs that never stabilised"]
    colour = {"scale": {"domain": names, "range": ["#0072B2", "#56B4E9", NEVER_COLOUR]}, "title": None}
    tooltip = _tooltip([*_context(columns), x, f"mean_{value}", f"min_{value}", f"max_{value}", "n_runs",
                        "n_never"], columns)  # fmt: skip
    axis = ordinal_axis(x, rows)
    return [
        {"mark": {"type": "rule", "strokeWidth": 3},
         "encoding": {"x": axis, "y": _number(f"min_{value}", label(value), scale={"domain": [0, 1.1]}),
                      "y2": {"field": f"max_{value}"}, "color": {"datum": names[1], **colour}}},
        {"mark": {"type": "point", "filled": True, "size": 40},
         "encoding": {"x": axis, "y": {"field": f"mean_{value}", "type": "quantitative"},
                      "color": {"datum": names[0], **colour}, "tooltip": tooltip}},
        {"transform": [{"filter": "datum.n_never > 0"},
                       {"calculate": "datum.n_never + ' never'", "as": "never_text"}],
         "mark": {"type": "text", "fontSize": 9, "dy": -2},
         "encoding": {"x": axis, "y": {"datum": 1.05}, "text": {"field": "never_text"},
                      "color": {"datum": names[2], **colour}, "tooltip": tooltip}},
    ]  # fmt: skip


def _twin(rows: list[dict], options: dict[str, str], columns: list[str]) -> list[dict]:
    x, y, series, left = options["x"], options["y"], options["series"], options["left"]
    axis = step_axis(x, rows)
    colour = {"field": series, "type": "nominal", "title": None}
    tooltip = _tooltip(["run_id", series, x, y], columns)
    return [
        {"transform": [{"filter": {"field": series, "equal": left}}], "mark": {"type": "line", "strokeWidth": 1.4},
         "encoding": {"x": axis, "y": _number(y, label(left), axis={"orient": "left"}), "color": colour,
                      "tooltip": tooltip}},
        {"transform": [{"filter": {"not": {"field": series, "equal": left}}}],
         "mark": {"type": "line", "strokeWidth": 1.8, "strokeDash": [5, 2]},
         "encoding": {"x": axis, "y": _number(y, "median CKA to the reference checkpoint",
                                              scale={"domain": [0, 1]}, axis={"orient": "right"}),
                      "color": colour, "tooltip": tooltip}},
    ]  # fmt: skip


DRAW = {
    "bands": _bands,
    "heatmap": _heatmap,
    "lines": _lines,
    "bars": _bars,
    "ranges": _ranges,
    "twin": _twin,
}


# -- the runs' logged values -----------------------------------------------------------------------


DASHES = ([1, 0], [6, 3], [2, 2], [8, 3, 2, 3])  # with the 8 colours: 32 runs told apart


def series_encoding(field: str, values: list[Any], title: str, width: int) -> dict[str, Any]:
    """Colour (and, past 8 series, dash) encodings telling ``values`` apart: the Okabe-Ito colours in
    turn, each next round of 8 with the next dash pattern; one legend, in as many columns as ``width``
    holds, so that 12 or 40 runs are each named once with a symbol that matches their line."""
    values = sorted(dict.fromkeys(values), key=natural_key)
    longest = max((len(str(v)) for v in values), default=1)
    columns = max(1, min(4, width // int(longest * 6.5 + 40)))
    legend = {"columns": columns, "symbolType": "stroke", "symbolStrokeWidth": 2.5, "symbolSize": 300, "labelLimit": 0,
              "direction": "vertical", "orient": "bottom"}  # fmt: skip
    colours = [OKABE_ITO[i % len(OKABE_ITO)] for i in range(len(values))]
    encoding: dict[str, Any] = {
        "color": {"field": field, "type": "nominal", "title": title, "legend": legend,
                  "scale": {"domain": values, "range": colours}},
    }  # fmt: skip
    if len(values) > len(OKABE_ITO):
        dashes = [DASHES[(i // len(OKABE_ITO)) % len(DASHES)] for i in range(len(values))]
        encoding["strokeDash"] = {"field": field, "type": "nominal", "title": title, "legend": legend,
                                  "scale": {"domain": values, "range": dashes}}  # fmt: skip
    return encoding


def scalar_figure(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """A logged value against step, one line per run (rows: run_id, step, value); None without rows."""
    if not rows:
        return None
    return {
        "$schema": SCHEMA,
        "title": {"text": f"{label(name)[:1].upper()}{label(name)[1:]} logged by each run", "anchor": "start"},
        "width": 560,
        "height": 260,
        "data": {"values": rows},
        "config": CONFIG,
        "mark": {"type": "line", "strokeWidth": 1.5},
        "encoding": {
            "x": step_axis("step", rows),
            "y": _number("value", label(name), scale={"zero": False}),
            **series_encoding("run_id", [r["run_id"] for r in rows], "run", 560),
            "tooltip": [{"field": "run_id", "title": "run"}, {"field": "step", "title": "training step"},
                        {"field": "value", "title": label(name)}],
        },
    }  # fmt: skip


# -- files ---------------------------------------------------------------------------------------


def draw(
    name: str,
    params: dict[str, Any],
    table: pa.Table,
    path: str | Path,
    fmt: str = "png",
    measure: str | None = None,
) -> Path | None:
    """Recipe ``name``'s figure of ``table`` (its result with ``params``) saved at ``path``; None when
    the recipe draws nothing or the result is empty."""
    from layerlake.queries.loader import bind_params, load_recipe

    recipe = load_recipe(name)
    spec = recipe_figure(recipe, bind_params(recipe, params), table, measure=measure)
    return None if spec is None else save_figure(spec, path, fmt)


# A PNG's largest size in pixels: 2400 x 3000 is 8 x 10 inches at 300 dpi (a journal page's text block,
# or a screen at 1.25x). A figure drawn larger at ``ppi`` is scaled down to fit, its dpi kept.
MAX_PNG_WIDTH, MAX_PNG_HEIGHT = 2400, 3000


def png_scale(spec: dict[str, Any], ppi: int) -> float:
    """The factor (at most 1) that fits ``spec`` drawn at ``ppi`` into ``MAX_PNG_WIDTH`` x
    ``MAX_PNG_HEIGHT`` pixels: vl-convert draws a CSS pixel as ``scale * ppi / 72`` pixels."""
    import vl_convert

    svg = vl_convert.vegalite_to_svg(spec)
    size = re.search(r'<svg[^>]*?\swidth="([\d.]+)"[^>]*?\sheight="([\d.]+)"', svg)
    if size is None:
        return 1.0
    width, height = (float(v) * ppi / 72 for v in size.groups())
    return min(1.0, MAX_PNG_WIDTH / width, MAX_PNG_HEIGHT / height)


def save_figure(spec: dict[str, Any], path: str | Path, fmt: str = "png", ppi: int = 300) -> Path:
    """Write ``spec`` to ``path`` as PNG (``ppi`` pixels per inch, at most ``MAX_PNG_WIDTH`` x
    ``MAX_PNG_HEIGHT`` pixels), SVG or PDF; written whole or not at all (a partial file renamed into
    place)."""
    import vl_convert

    if fmt not in FORMATS:
        raise ParameterError(f"unknown figure format {fmt!r}", fix=f"use one of: {', '.join(FORMATS)}")
    if fmt == "png":
        data = vl_convert.vegalite_to_png(spec, scale=png_scale(spec, ppi), ppi=ppi)
    elif fmt == "svg":
        data = vl_convert.vegalite_to_svg(spec).encode()
    else:
        data = vl_convert.vegalite_to_pdf(spec)
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    partial.replace(path)
    return path
