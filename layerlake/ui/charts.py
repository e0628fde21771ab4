"""Vega-Lite specifications for the UI: a recipe's result drawn as its header's ``plot:`` line says
(the same spec ``queries.plots`` draws as a PNG), and the overview's loss curves.

Specs are plain dicts built from column names the recipe declares, and rows as data values: nothing a
request sends reaches a spec except through the rows of a validated query.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from layerlake.queries.plots import parse_spec

MAX_CHART_ROWS = 5_000  # rows drawn; the table and the downloads hold every row
PANEL = "panel"  # the field that names a row's panel (its panel columns joined)


def recipe_chart(plot: str, table: pa.Table, title: str) -> dict[str, Any] | None:
    """The Vega-Lite spec of ``plot`` (a recipe's ``plot:`` line) over ``table``; None for no plot."""
    kind, options = parse_spec(plot)
    if kind == "none" or table.num_rows == 0:
        return None
    panels = [c for c in options.get("panels", "").split(",") if c and c in table.column_names]
    rows = table.slice(0, MAX_CHART_ROWS).to_pylist()
    for row in rows:
        row[PANEL] = " · ".join(str(row[c]) for c in panels if row[c] is not None)
    layer = _layer(kind, options, table.column_names)
    if layer is None:
        return None
    tooltip = [
        {"field": c, "type": _type(table, c)} for c in table.column_names if c in _shown(options, table)
    ]
    for item in layer if isinstance(layer, list) else [layer]:
        aggregated = [f"{a['as']}" for t in item.get("transform", []) for a in t.get("aggregate", [])]
        shown = (
            [{"field": options.get("x", "step")}, *({"field": f} for f in aggregated)]
            if aggregated
            else tooltip
        )
        item.setdefault("encoding", {})["tooltip"] = shown
    spec: dict[str, Any] = {
        "$schema": "https://vega.github.io/schema/vega-lite/v6.json",
        "title": title,
        "data": {"values": rows},
        "facet": {"field": PANEL, "type": "nominal", "title": None},
        "columns": 3,
        "spec": {"width": 260, "height": 180, "layer": layer if isinstance(layer, list) else [layer]},
        # models have different numbers of layers: a heatmap panel's rows are its own model's layers
        "resolve": {"scale": {"color": "shared", "y": "independent" if kind == "heatmap" else "shared"}},
    }
    if not panels:
        spec.pop("facet")
        spec.pop("columns")
        spec.update(spec.pop("spec"))
    return spec


def _shown(options: dict[str, str], table: pa.Table) -> list[str]:
    named = [v for k, v in options.items() if k != "panels"]
    return [c for c in table.column_names if c in named or c in ("layer", "step", "site", "model", "run_id")]


def _type(table: pa.Table, column: str) -> str:
    kind = table.schema.field(column).type
    return "quantitative" if pa.types.is_integer(kind) or pa.types.is_floating(kind) else "nominal"


def _layer(kind: str, options: dict[str, str], columns: list[str]) -> Any:
    x = options.get("x", "step")
    step_axis = {"field": x, "type": "quantitative", "title": x.replace("_", " ")}
    if kind == "heatmap":
        return {
            "mark": "rect",
            "encoding": {
                "x": {"field": x, "type": "ordinal", "title": x.replace("_", " ")},
                "y": {"field": options["y"], "type": "ordinal", "title": options["y"].replace("_", " ")},
                "color": {"field": options["value"], "type": "quantitative", "scale": {"scheme": "viridis"}},
            },
        }
    if kind == "lines":
        encoding = {"x": step_axis, "y": {"field": options["y"], "type": "quantitative"}}
        if options.get("line"):
            encoding["color"] = {"field": options["line"], "type": "nominal"}
        return {"mark": {"type": "line", "point": True}, "encoding": encoding}
    if kind in ("bars", "ranges"):
        return {
            "mark": "bar",
            "encoding": {
                "x": {"field": x, "type": "ordinal", "title": x.replace("_", " ")},
                "y": {
                    "field": options["value"],
                    "type": "quantitative",
                    "title": options["value"].replace("_", " "),
                },
            },
        }
    if kind == "twin":
        return {
            "mark": "line",
            "encoding": {
                "x": step_axis,
                "y": {"field": options["y"], "type": "quantitative"},
                "color": {"field": options["series"], "type": "nominal"},
            },
        }
    if kind == "bands":  # Figure 1: the spread of the layers' CKA at each step (quartiles, min-max, median)
        y = options.get("y", "cka")
        summary = {
            "transform": [
                {
                    "aggregate": [
                        {"op": op, "field": y, "as": op} for op in ("min", "q1", "median", "q3", "max")
                    ],
                    "groupby": [x, PANEL],
                }
            ],
        }
        return [
            {**summary, "mark": {"type": "area", "opacity": 0.2},
             "encoding": {"x": step_axis, "y": {"field": "min", "type": "quantitative", "title": y},
                          "y2": {"field": "max"}}},
            {**summary, "mark": {"type": "area", "opacity": 0.45},
             "encoding": {"x": step_axis, "y": {"field": "q1", "type": "quantitative"}, "y2": {"field": "q3"}}},
            {**summary, "mark": "line", "encoding": {"x": step_axis, "y": {"field": "median", "type": "quantitative"}}},
        ]  # fmt: skip
    return None


def loss_chart(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Loss against step, one line per run; None when no run logged a loss."""
    return scalar_chart(rows, "loss")


def scalar_chart(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """A logged scalar against step, one line per run (rows: run_id, step, value); None without rows."""
    if not rows:
        return None
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v6.json",
        "title": f"{name.replace('_', ' ')} by run",
        "width": 560,
        "height": 260,
        "data": {"values": rows},
        "mark": "line",
        "encoding": {
            "x": {"field": "step", "type": "quantitative"},
            "y": {"field": "value", "type": "quantitative", "title": name.replace("_", " ")},
            "color": {"field": "run_id", "type": "nominal", "title": "run"},
            "tooltip": [{"field": f} for f in ("run_id", "step", "value")],
        },
    }
