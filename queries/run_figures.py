"""The runs pages' figures (Vega-Lite, drawn by the browser as every figure of ``queries.figures``):
a run's logged values, and a sweep's hyperparameters against an outcome."""

from __future__ import annotations

import math
from typing import Any

from layerlake.queries.figures import CONFIG, OKABE_ITO, SCHEMA, label

# What the sweep view plots each hyperparameter against: name -> (words, what computes it)
OUTCOMES = {
    "final_loss": "final loss (the last logged loss)",
    "stabilised_share": "share of layers stabilised by 20 % of training (recipe stabilised_share)",
    "median_stabilisation_step": "median stabilisation step over layers (recipe stabilisation)",
}


def logged_figure(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Every value a run logged against step, one panel per name, each with its own y axis
    (rows: name, step, value); None without rows."""
    if not rows:
        return None
    return {
        "$schema": SCHEMA,
        "data": {"name": "logged", "values": rows},
        "config": CONFIG,
        "facet": {"row": {"field": "name", "type": "nominal", "title": None, "header": {"labelAngle": 0,
                                                                                      "labelAlign": "left"}}},
        "resolve": {"scale": {"y": "independent"}},
        "spec": {
            "width": 560, "height": 120,
            "mark": {"type": "line", "strokeWidth": 1.5, "point": {"size": 12}},
            "encoding": {
                # a plain axis: a live page adds steps to this figure, which fixed ticks would not show
                "x": {"field": "step", "type": "quantitative", "title": label("step"),
                      "axis": {"tickMinStep": 1, "labelExpr": "datum.value % 1 ? '' : datum.label"}},
                "y": {"field": "value", "type": "quantitative", "title": None, "scale": {"zero": False}},
                "color": {"value": OKABE_ITO[0]},
                "tooltip": [{"field": "name"}, {"field": "step", "title": "training step"}, {"field": "value"}],
            },
        },
    }  # fmt: skip


def sweep_figure(rows: list[dict[str, Any]], keys: list[str], outcome: str) -> dict[str, Any] | None:
    """One scatter panel per hyperparameter (``keys``): its value (x) against ``outcome`` (y), a point
    per run (rows: run_id, the keys, outcome). A key whose values are all numbers is a number axis
    (logarithmic when they are positive and span more than a factor of 100), any other a category axis."""
    drawn = [r for r in rows if r.get(outcome) is not None]
    if not drawn or not keys:
        return None
    panels = []
    for index, key in enumerate(keys):
        values = [r.get(key) for r in drawn if r.get(key) is not None]
        numeric = bool(values) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        )
        # a field named x0, x1 ...: Vega reads a dot in a field name (optim.lr) as a nested field
        x: dict[str, Any] = {
            "field": f"x{index}",
            "title": key,
            "type": "quantitative" if numeric else "nominal",
        }
        if numeric:
            positive = [float(v) for v in values if v > 0]
            spread = len(positive) == len(values) and max(positive) / min(positive) > 100
            x["scale"] = {"type": "log"} if spread else {"zero": False}
        panels.append({
            "width": 200, "height": 200,
            "mark": {"type": "point", "filled": True, "size": 60},
            "encoding": {
                "x": x,
                "y": {"field": outcome, "type": "quantitative", "scale": {"zero": False},
                      "title": label(outcome) if index == 0 else None},
                "color": {"value": OKABE_ITO[index % len(OKABE_ITO)]},
                "tooltip": [{"field": "run_id", "title": "run"}, {"field": f"x{index}", "title": key},
                            {"field": outcome}],
            },
        })  # fmt: skip
    return {
        "$schema": SCHEMA,
        "title": {
            "text": f"Each swept value against the {OUTCOMES[outcome].split(' (')[0]}",
            "anchor": "start",
        },
        "data": {
            "values": [
                {
                    "run_id": r["run_id"],
                    outcome: _plain(r[outcome]),
                    **{f"x{i}": _plain(r.get(k)) for i, k in enumerate(keys)},
                }
                for r in drawn
            ]
        },
        "config": CONFIG,
        "hconcat": panels,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
