"""Draws a recipe's result as a PNG, as its header's ``-- plot:`` line asks.

A plot spec is a kind and ``key=column`` options, e.g. ``heatmap x=step y=layer value=cka panels=model,site``:

    bands    the paper's Figure 1: p10-p90 and p25-p75 bands and the median per x (log-x steps)
    heatmap  value over an x by y grid (layer x checkpoint, step x step, layer x layer)
    lines    y over x, one line per ``line`` value (rank trajectories per layer; log-x steps)
    bars     value per x (e.g. stabilisation fraction per layer; a never-stabilised layer is marked x)

``panels`` names the columns that split the figure: the first gives the rows of the grid, the rest the
columns; ``suite`` and ``source`` join the rows when they take several values. Uses matplotlib's Agg
canvas directly (no pyplot state, no display needed).
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
from matplotlib.figure import Figure

from layerlake.queries.errors import RecipeError
from layerlake.queries.loader import load_recipe

MAX_PANELS = 36
MAX_COLUMNS = 4
KINDS = ("bands", "heatmap", "lines", "bars", "ranges", "twin")
# Attention before MLP, as in the paper's figures; unknown sites follow in name order.
SITE_ORDER = ("ov", "attn_out", "qkv_last_third", "attention", "mlp_out", "mlp", "resid_post")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)([mbk])\b", re.IGNORECASE)
_SUFFIX = {"xs": 0, "s": 1, "m": 2, "l": 3, "xl": 4}


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"heatmap x=step y=layer"`` -> ``("heatmap", {"x": "step", "y": "layer"})``."""
    kind, *options = spec.split()
    return kind, dict(option.split("=", 1) for option in options)


def plot(name: str, table: pa.Table, path: str | Path) -> Path | None:
    """Draw recipe ``name``'s result ``table`` into ``path`` (PNG); None if it has no plot or no rows."""
    kind, options = parse_spec(load_recipe(name).plot)
    if kind == "none" or table.num_rows == 0:
        return None
    if kind not in KINDS:
        raise RecipeError(
            f"recipe {name!r} asks for unknown plot kind {kind!r}", fix=f"use one of {KINDS} or none"
        )
    rows = table.to_pylist()
    panels = _panels(rows, options.get("panels", ""), table.column_names)
    shown = panels[:MAX_PANELS]
    figure, cells = _grid(shown, sharey=kind != "heatmap")
    image = None
    for ((row_key, col_key), panel), ax in zip(shown, cells, strict=True):
        ax.set_title(" · ".join(str(k) for k in (*row_key, *col_key) if k is not None), fontsize=9)
        image = DRAW[kind](ax, panel, options) or image
    for ax in figure.axes:
        if not ax.has_data():
            ax.set_visible(False)
    if image is not None:
        figure.colorbar(image, ax=figure.axes, shrink=0.8, label=options.get("value", ""))
    width = int(9 * figure.get_figwidth())  # characters that fit across the figure at this font size
    title = f"{name}: {headline(load_recipe(name).description, width)}"
    if len(panels) > MAX_PANELS:
        title += f"\n(first {MAX_PANELS} of {len(panels)} panels: filter with models= / sites=)"
    figure.suptitle(title, fontsize=11)
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path


def headline(description: str, width: int = 110) -> str:
    """The description's first sentence, wrapped: the figure says what it shows."""
    sentence = description.split(". ")[0].rstrip(".")
    return "\n".join(textwrap.wrap(sentence, width))


def _grid(shown: list, sharey: bool) -> tuple[Figure, list]:
    """One axis per panel: a (row key x column key) grid, or, when the column keys are many
    (rank trajectories: tensor x matrix), the panels in reading order, MAX_COLUMNS to a row."""
    row_keys = list(dict.fromkeys(r for (r, _), _ in shown))
    col_keys = list(dict.fromkeys(c for (_, c), _ in shown))
    if len(col_keys) <= MAX_COLUMNS:
        n_rows, n_cols = len(row_keys), max(1, len(col_keys))
        places = [(row_keys.index(r), col_keys.index(c)) for (r, c), _ in shown]
    else:
        n_cols = MAX_COLUMNS
        n_rows = math.ceil(len(shown) / n_cols)
        places = [divmod(i, n_cols) for i in range(len(shown))]
    figure = Figure(figsize=(4.2 * n_cols + 1, 3.0 * n_rows + 0.9), layout="constrained")
    axes = figure.subplots(n_rows, n_cols, squeeze=False, sharey=sharey)
    return figure, [axes[r][c] for r, c in places]


def _panels(rows: list[dict], spec: str, columns: list[str]) -> list[tuple[tuple[tuple, tuple], list[dict]]]:
    """Rows grouped by panel: key = ((row values), (column values)), in a natural order."""
    wanted = [c for c in spec.split(",") if c in columns]
    varying = [
        c for c in ("suite", "source") if c in columns and c not in wanted and len({r[c] for r in rows}) > 1
    ]
    row_cols, col_cols = [*varying, *wanted[:1]], wanted[1:]
    groups: dict[tuple[tuple, tuple], list[dict]] = {}
    for row in rows:
        key = (tuple(row[c] for c in row_cols), tuple(row[c] for c in col_cols))
        groups.setdefault(key, []).append(row)
    return sorted(groups.items(), key=lambda item: (_order(item[0][0]), _order(item[0][1])))


def _order(values: tuple) -> tuple:
    return tuple(natural_key(v) for v in values)


def natural_key(value: object) -> tuple:
    """Sort key: sites in the paper's order, model names by size (70m < 160m < 1.4b; s < m < l)."""
    if value is None:
        return (0, 0.0, "")
    text = str(value)
    if text in SITE_ORDER:
        return (1, float(SITE_ORDER.index(text)), text)
    size = _SIZE.search(text)
    if size:
        scale = {"k": 1e3, "m": 1e6, "b": 1e9}[size[2].lower()]
        return (2, float(size[1]) * scale, text)
    suffix = text.rsplit("-", 1)[-1].lower()
    if suffix in _SUFFIX:
        return (3, float(_SUFFIX[suffix]), text)
    if isinstance(value, (int, float)):
        return (4, float(value), "")
    return (5, 0.0, text)


def _steps_axis(ax, xs: list) -> None:
    """Log-x for training steps: symlog keeps step 0 on the axis (linear below 1)."""
    if xs and min(xs) >= 0 and max(xs) > 10:
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(0, max(xs) * 1.1)


def _bands(ax, rows: list[dict], options: dict[str, str]) -> None:
    x = options.get("x", "step")
    rows = sorted(rows, key=lambda r: r[x])
    xs = [r[x] for r in rows]
    get = {
        q: np.array([np.nan if r[q] is None else r[q] for r in rows], dtype=float)
        for q in ("p10", "p25", "p50", "p75", "p90")
    }
    ax.fill_between(xs, get["p10"], get["p90"], alpha=0.2, color="C0", label="10-90th")
    ax.fill_between(xs, get["p25"], get["p75"], alpha=0.4, color="C0", label="25-75th")
    ax.plot(xs, get["p50"], color="C0", lw=1.6, label="median")
    _steps_axis(ax, xs)
    ax.set_xlabel(x)
    ax.set_ylabel("CKA to reference")
    ax.set_ylim(min(0.0, float(np.nanmin(get["p10"]))) if np.isfinite(get["p10"]).any() else 0.0, 1.02)
    ax.legend(fontsize=7, loc="lower right")


def _heatmap(ax, rows: list[dict], options: dict[str, str]):
    x, y, value = options["x"], options["y"], options["value"]
    xs = sorted({r[x] for r in rows}, key=natural_key)
    ys = sorted({r[y] for r in rows}, key=natural_key)
    grid = np.full((len(ys), len(xs)), np.nan)
    xi, yi = {v: i for i, v in enumerate(xs)}, {v: i for i, v in enumerate(ys)}
    for r in rows:
        if r[value] is not None:
            grid[yi[r[y]], xi[r[x]]] = r[value]
    low = min(0.0, float(np.nanmin(grid))) if np.isfinite(grid).any() else 0.0
    image = ax.imshow(
        grid, origin="lower", aspect="auto", vmin=low, vmax=1.0, cmap="viridis", interpolation="nearest"
    )
    _ticks(ax.set_xticks, ax.set_xticklabels, xs, rotate=True)
    _ticks(ax.set_yticks, ax.set_yticklabels, ys)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    return image


def _ticks(set_ticks, set_labels, values: list, rotate: bool = False) -> None:
    stride = max(1, math.ceil(len(values) / 10))
    positions = list(range(0, len(values), stride))
    set_ticks(positions)
    set_labels([str(values[i]) for i in positions], rotation=60 if rotate else 0, fontsize=7)


def _lines(ax, rows: list[dict], options: dict[str, str]) -> None:
    x, y, line = options["x"], options["y"], options.get("line")
    groups: dict = {}
    for r in rows:
        groups.setdefault(r[line] if line else None, []).append(r)
    keys = sorted(groups, key=natural_key)
    for i, key in enumerate(keys):
        points = sorted(groups[key], key=lambda r: r[x])
        colour = _viridis(i / max(1, len(keys) - 1))
        ax.plot(
            [p[x] for p in points],
            [np.nan if p[y] is None else p[y] for p in points],
            color=colour,
            lw=1.2,
            label=None if key is None else f"{line} {key}",
        )
    _steps_axis(ax, [r[x] for r in rows])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if 1 < len(keys) <= 12:
        ax.legend(fontsize=6, ncol=2)


def _viridis(fraction: float):
    from matplotlib import colormaps

    return colormaps["viridis"](fraction)


def _bars(ax, rows: list[dict], options: dict[str, str]) -> None:
    x, value = options["x"], options["value"]
    rows = sorted(rows, key=lambda r: natural_key(r[x]))
    positions = list(range(len(rows)))
    heights = [np.nan if r[value] is None else r[value] for r in rows]
    ax.bar(positions, np.nan_to_num(heights, nan=0.0), color="C0")
    never = [p for p, h in zip(positions, heights, strict=True) if np.isnan(h)]
    if never:
        ax.plot(never, [1.02] * len(never), "x", color="C3", label="never")
        ax.legend(fontsize=7)
    _ticks(ax.set_xticks, ax.set_xticklabels, [r[x] for r in rows])
    ax.set_xlabel(x)
    ax.set_ylabel(value)
    ax.set_ylim(0, 1.08)


def _ranges(ax, rows: list[dict], options: dict[str, str]) -> None:
    """Mean of ``mean_<value>`` per x with a bar from ``min_<value>`` to ``max_<value>`` (across runs)."""
    x, value = options["x"], options["value"]
    rows = sorted(rows, key=lambda r: natural_key(r[x]))
    positions = np.arange(len(rows))
    mean = np.array([np.nan if r[f"mean_{value}"] is None else r[f"mean_{value}"] for r in rows], dtype=float)
    low = np.array([np.nan if r[f"min_{value}"] is None else r[f"min_{value}"] for r in rows], dtype=float)
    high = np.array([np.nan if r[f"max_{value}"] is None else r[f"max_{value}"] for r in rows], dtype=float)
    ax.vlines(positions, low, high, color="C0", lw=2, alpha=0.6, label="min-max over runs")
    ax.plot(positions, mean, "o", color="C0", label="mean over runs")
    never = [(p, r.get("n_never", 0)) for p, r in zip(positions, rows, strict=True) if r.get("n_never")]
    for p, count in never:
        ax.annotate(f"{count} never", (p, 1.02), ha="center", fontsize=6, color="C3")
    _ticks(ax.set_xticks, ax.set_xticklabels, [r[x] for r in rows])
    ax.set_xlabel(x)
    ax.set_ylabel(value)
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=6, loc="lower right")


def _twin(ax, rows: list[dict], options: dict[str, str]) -> None:
    """Series ``left`` on the left axis, every other series on a 0-1 right axis, over x."""
    x, y, series, left = options["x"], options["y"], options["series"], options["left"]
    groups: dict = {}
    for r in rows:
        groups.setdefault(r[series], []).append(r)
    right = ax.twinx()
    for i, (name, points) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0] != left, kv[0]))):
        points = sorted(points, key=lambda r: r[x])
        target = ax if name == left else right
        target.plot([p[x] for p in points], [np.nan if p[y] is None else p[y] for p in points],
                    color=f"C{i}", lw=1.2 if name == left else 1.6, label=name)  # fmt: skip
    _steps_axis(ax, [r[x] for r in rows])
    ax.set_xlabel(x)
    ax.set_ylabel(left)
    right.set_ylabel("median CKA to the reference")
    right.set_ylim(0, 1.02)
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=6, loc="upper center",
              bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False)  # fmt: skip  # below the axes, never on the data


DRAW = {
    "bands": _bands,
    "heatmap": _heatmap,
    "lines": _lines,
    "bars": _bars,
    "ranges": _ranges,
    "twin": _twin,
}
