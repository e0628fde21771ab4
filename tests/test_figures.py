"""Every recipe's figure, drawn from a real warehouse by the one plotting layer (``queries.figures``) and
read back as the SVG a reader would see: a title in words naming what is shown, the estimator, kernel,
reference step and threshold; axis labels in words; the stored step numbers on step axes; one legend;
"never stabilised" said as such; only colour-blind-safe colours; PNG at 300 dpi, SVG and PDF on request."""

from __future__ import annotations

import html
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

import layerlake
from layerlake import warehouse
from layerlake.core.errors import ParameterError
from layerlake.queries import figures
from layerlake.queries.loader import bind_params, list_recipes, load_recipe, run_recipe
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import Warehouse

STEPS = (
    0,
    1,
    2,
    4,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
    1000,
    2000,
    3000,
)  # log-spaced, then linear (Pythia's shape)
LAYERS = {"tiny-s": 2, "tiny-m": 3}
SITES = ("attn_out", "mlp_out")
SEED_RUN = "s.tiny-s.seed2"


def _grams(rng, n_layers: int, wander: tuple[int, str]) -> dict:
    """Each layer's activations move from random towards their final value over training; the layer and
    site in ``wander`` never settle (a fresh random state at every step)."""
    final = {(layer, site): rng.normal(size=(8, 6)) for layer in range(n_layers) for site in SITES}
    start = {key: rng.normal(size=(8, 6)) for key in final}
    out = {}
    for step in STEPS:
        share = np.log1p(step) / np.log1p(STEPS[-1])
        for key in final:
            x = rng.normal(size=(8, 6)) if key == wander else (1 - share) * start[key] + share * final[key]
            x = x - x.mean(axis=0)
            out[(step, *key)] = x @ x.T
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("figures") / "warehouse"
    store = Warehouse(root)
    rng = np.random.default_rng(1)
    runs = [("tiny-s", None), ("tiny-m", None), ("tiny-s", SEED_RUN)]
    for model, run_id in runs:
        grams = _grams(rng, LAYERS[model], wander=(1, "mlp_out"))
        for step in STEPS:
            here = {(layer, site): g for (s, layer, site), g in grams.items() if s == step}
            spectra = {
                (layer, matrix): np.sort(rng.random(6) + step / 3000)[::-1]
                for layer in range(LAYERS[model])
                for matrix in ("dense", "dense_4h_to_h")
            }
            tables = checkpoint_tables(
                model, step, here, spectra, d=6, weights_sha256=f"{model}{run_id}{step}"
            )
            store.commit(f"{run_id or model}-{step}", "s", model, tables, {"step": step}, run_id=run_id)
    with layerlake.track(suite="s", model_name="tiny-s", run_id="s.tiny-s", warehouse=root) as run:
        for step in range(0, 3001, 100):
            run.log(step, loss=5.0 / (1 + step / 300))
    return root


@pytest.fixture(scope="module")
def con(root):
    connection = warehouse.connect(root)
    yield connection
    connection.close()


# recipe -> (parameters, words the figure must show)
EXPECTED = {
    "consecutive_similarity": ({}, ["How much each layer still moves", "biased CKA estimator, linear kernel"]),
    "convergence": ({}, ["CKA of each layer to the reference checkpoint",
                         "reference checkpoint: each model's last step (3000)"]),
    "layer_percentiles": ({"reference_step": 2000}, ["Spread over layers of CKA", "reference checkpoint: step 2000",
                                                     "10th-90th percentile of layers", "median over layers"]),
    "loss_and_convergence": ({}, ["Training loss beside the layers' median CKA", "median CKA mlp_out"]),
    "model_similarity": ({}, ["CKA between the layers of two models at step 3000", "x: tiny-m", "y: s.tiny-s ·",
                             f"y: {SEED_RUN} ·", "run of model y"]),
    "rank_trajectories": ({"tensor": "weight"}, ["PER (effective rank / k) of each layer's matrices",
                                                  "PER's k: rank"]),
    "run_similarity": ({"models": ["tiny-s"]}, ["CKA between two runs of tiny-s, per layer", f"vs {SEED_RUN}"]),
    "stabilisation": ({"reference_step": 256, "threshold": 0.8},
                      ["When each layer stabilises (CKA to the reference stays at or above 0.8)",
                       "reference checkpoint: step 256", "never stabilised"]),
    "stabilisation_across_runs": ({"threshold": 0.95}, ["When each layer stabilises across runs",
                                                        "at or above 0.95", "min to max over runs"]),
    "step_similarity": ({"model": "tiny-m", "layer": 2, "site": "attn_out"},
                        ["CKA between the checkpoints of tiny-m: layer 2, site attn_out"]),
}  # fmt: skip
RAW_COLUMNS = re.compile(r"\b(stabilisation_fraction|layer_a|layer_b|step_a|step_b|stable_rank|p50|run_id)\b")


def drawn_text(spec: dict, path: Path) -> list[str]:
    """The texts of the figure as vl-convert draws it (SVG), one per text element."""
    figures.save_figure(spec, path, "svg")
    texts = re.findall(r"<text[^>]*>(.*?)</text>", path.read_text(), re.S)
    lines = [re.sub(r"<[^>]+>", "\n", t) for t in texts]  # a multi-line text: one tspan per line
    return [html.unescape(line) for t in lines for line in t.split("\n") if line]


def test_every_recipe_with_a_figure_is_checked_here():
    drawn = {r.name for r in list_recipes() if r.plot != "none"}
    assert drawn == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_figure_says_what_it_shows_in_words(con, tmp_path, name):
    params, words = EXPECTED[name]
    recipe = load_recipe(name)
    bound = bind_params(recipe, params)
    table = run_recipe(con, name, bound)
    spec = figures.recipe_figure(recipe, bound, table)
    assert spec is not None, f"{name}: no figure from {table.num_rows} rows"
    texts = drawn_text(spec, tmp_path / f"{name}.svg")
    joined = "\n".join(texts)
    assert "{" not in spec["title"]["text"], spec["title"]  # every field of the title filled in
    for phrase in words:
        assert phrase in joined, (name, phrase, texts[:12])
    raw = [t for t in texts if RAW_COLUMNS.search(t)]
    assert not raw, f"{name}: raw column names drawn: {raw}"
    svg = (tmp_path / f"{name}.svg").read_text()
    legends = svg.count('class="mark-group role-legend"')
    assert legends <= 2, f"{name}: {legends} legends: one per encoding, never one per panel"
    assert set(colours(spec)) <= ALLOWED_COLOURS, f"{name}: colours outside the palette: {colours(spec)}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_figure_carries_the_fields_it_draws_and_no_others(con, name):
    """The rows sent with a figure hold what its encodings, facets and filters read (a tooltip's model,
    a filter's ``datum.p50``), nothing else: the UI sends these rows to the browser."""
    params, _ = EXPECTED[name]
    recipe = load_recipe(name)
    bound = bind_params(recipe, params)
    table = run_recipe(con, name, bound)
    spec = figures.recipe_figure(recipe, bound, table)
    read = figures.drawn_fields(spec)
    held = set().union(*spec["data"]["values"])
    assert held <= read, f"{name}: rows carry fields no mark reads: {sorted(held - read)}"
    missing = {f for f in read if f in table.column_names and table.column(f).null_count < table.num_rows}
    assert missing <= held, f"{name}: fields the figure reads were dropped: {sorted(missing - held)}"


def test_drawn_fields_reads_encodings_and_expressions():
    spec = {"data": {"values": [{"field": "not a spec"}]},
            "layer": [{"transform": [{"filter": "isValid(datum.p50) && datum['run id'] != null"}],
                       "encoding": {"x": {"field": "step"}, "tooltip": [{"field": "layer"}]}}],
            "facet": {"field": "panel"}}  # fmt: skip
    assert figures.drawn_fields(spec) == {"p50", "run id", "step", "layer", "panel"}


def colours(spec: dict) -> list[str]:
    return sorted({c.upper() for c in re.findall(r"#[0-9A-Fa-f]{6}\b", json.dumps(spec))})


# Okabe-Ito (categories), the bands' blues, black; sequential values use the viridis scheme by name
ALLOWED_COLOURS = {c.upper() for c in (*figures.OKABE_ITO, "#9ECAE9", "#2F6DB0", "#444444")}


def test_step_axes_show_the_stored_steps_log_spaced_where_they_are(con, tmp_path):
    recipe = load_recipe("layer_percentiles")
    bound = bind_params(recipe, {})
    spec = figures.recipe_figure(recipe, bound, run_recipe(con, "layer_percentiles", bound))
    x = spec["spec"]["layer"][0]["encoding"]["x"]
    assert x["scale"]["type"] == "symlog" and x["title"] == "training step (log scale)"
    ticks = x["axis"]["values"]
    assert set(ticks) <= set(STEPS) and ticks[-1] == STEPS[-1] and 0 in ticks
    texts = drawn_text(spec, tmp_path / "bands.svg")
    assert "3,000" in texts and "0" in texts and "10^0" not in "".join(texts)
    # evenly spaced steps (a run logging every 100 steps) stay on a linear axis
    assert not figures.log_spaced(list(range(0, 3001, 100)))
    assert figures.log_spaced(list(STEPS))


def test_heatmap_step_labels_are_few_readable_and_include_the_last_step(con, tmp_path):
    recipe = load_recipe("step_similarity")
    bound = bind_params(recipe, {"model": "tiny-s"})
    spec = figures.recipe_figure(recipe, bound, run_recipe(con, "step_similarity", bound))
    for axis in ("x", "y"):
        shown = spec["spec"]["layer"][0]["encoding"][axis]["axis"]["values"]
        assert shown[0] == 0 and shown[-1] == STEPS[-1] and len(shown) <= 10, shown
    texts = drawn_text(spec, tmp_path / "matrix.svg")
    assert "s.tiny-s" in texts and SEED_RUN in texts  # tiny-s has two runs: a panel each
    assert texts.count("3,000") == 4  # the last step labelled on both axes of both panels


def test_a_layer_that_never_stabilised_is_shown_as_such(con, tmp_path):
    params = {"reference_step": 256, "threshold": 0.8}
    table = run_recipe(con, "stabilisation", params)
    never = [r for r in table.to_pylist() if r["stabilisation_fraction"] is None]
    assert never and {(r["layer"], r["site"]) for r in never} == {(1, "mlp_out")}
    spec = figures.recipe_figure(load_recipe("stabilisation"), bind_params(load_recipe("stabilisation"), params),
                                 table)  # fmt: skip
    svg = (figures.save_figure(spec, tmp_path / "never.svg", "svg")).read_text()
    assert "never stabilised" in svg
    marks = spec["spec"]["layer"]
    assert marks[0]["transform"][0]["filter"].startswith("isValid") and marks[1]["mark"]["shape"] == "cross"


def test_png_is_300_dpi_and_svg_and_pdf_are_written_whole(con, tmp_path):
    table = run_recipe(con, "convergence", {})
    png = figures.draw("convergence", {}, table, tmp_path / "c.png")
    assert png_dpi(png) == 300
    assert figures.draw("convergence", {}, table, tmp_path / "c.svg", "svg").read_text().startswith("<svg")
    assert figures.draw("convergence", {}, table, tmp_path / "c.pdf", "pdf").read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pdf", "c.png", "c.svg"]  # no partial files left


def png_dpi(path: Path) -> int:
    """Dots per inch from the PNG's pHYs chunk (pixels per metre)."""
    data = path.read_bytes()
    at = data.index(b"pHYs")
    per_metre, _, unit = struct.unpack(">IIB", data[at + 4 : at + 13])
    assert unit == 1, "pHYs unit is not the metre"
    return round(per_metre * 0.0254)


def test_a_measure_is_chosen_by_name_and_a_wrong_one_is_named(con, tmp_path):
    recipe = load_recipe("rank_trajectories")
    bound = bind_params(recipe, {})
    table = run_recipe(con, "rank_trajectories", bound)
    spec = figures.recipe_figure(recipe, bound, table, measure="stable_rank")
    assert spec["title"]["text"].startswith("Stable rank of each layer")
    assert "stable rank" in drawn_text(spec, tmp_path / "stable.svg")
    with pytest.raises(ParameterError, match="cannot plot measure 'rank'") as error:
        figures.recipe_figure(recipe, bound, table, measure="rank")
    assert "per, erank, stable_rank" in error.value.fix
    with pytest.raises(ParameterError, match="offers no choice of measure"):
        figures.check_measure(load_recipe("convergence"), "per")


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if load_recipe(n).plot.startswith("heatmap")))
def test_no_heatmap_draws_two_rows_in_one_cell(con, name):
    """A model with two runs (tiny-s and its seed) gets a panel per run, so every cell holds one row:
    model_similarity's run pairs (tiny-m against each of tiny-s's runs) are never overlaid."""
    params, _ = EXPECTED[name]
    recipe = load_recipe(name)
    bound = bind_params(recipe, params)
    spec = figures.recipe_figure(recipe, bound, run_recipe(con, name, bound))
    options = figures.parse_spec(recipe.plot)[1]
    rows = spec["data"]["values"]
    panel = [(r.get("panel"), r.get("panel_row"), r.get("panel_column")) for r in rows]
    cells = [(*p, r[options["x"]], r[options["y"]]) for p, r in zip(panel, rows, strict=True)]
    assert len(cells) == len(set(cells)), f"{name}: rows drawn over each other"
    if name == "model_similarity":
        assert {p[1:] for p in panel} == {
            ("x: tiny-m", f"y: {run} · {site}") for run in ("s.tiny-s", SEED_RUN) for site in SITES
        }


def test_the_rank_legend_draws_the_solid_and_dashed_strokes(con, tmp_path):
    """Weights solid, gradients dashed: the legend shows each as a stroke with that dash, not a blank."""
    import pyarrow as pa
    import pyarrow.compute as pc

    recipe = load_recipe("rank_trajectories")
    bound = bind_params(recipe, {"models": ["tiny-m"]})
    weights = run_recipe(con, "rank_trajectories", bound)
    grads = weights.set_column(
        weights.schema.get_field_index("tensor"), "tensor", pa.array(["grad"] * weights.num_rows)
    )
    grads = grads.set_column(grads.schema.get_field_index("per"), "per", pc.multiply(grads["per"], 0.8))
    spec = figures.recipe_figure(recipe, bound, pa.concat_tables([weights, grads]))
    svg = figures.save_figure(spec, tmp_path / "ranks.svg", "svg").read_text()
    legend = svg[svg.index("role-legend") :]
    strokes = re.findall(
        r'<path transform="[^"]*" d="M-?[\d.]+,0L[\d.]+,0" stroke="(#[0-9a-f]+)"[^>]*stroke-dasharray="([^"]+)"',
        legend,
    )
    assert sorted(dash for _, dash in strokes) == ["1,0", "5,3"], strokes  # solid weight, dashed grad
    assert all(colour != "transparent" for colour, _ in strokes)


def test_png_files_stay_a_sensible_size_at_300_dpi(con, tmp_path):
    """Many panels (3 runs x 2 sites of heatmaps) still make a PNG of at most 2400 x 3000 pixels (8 x 10
    inches at 300 dpi); a small figure is not blown up."""
    for name in ("convergence", "model_similarity", "step_similarity"):
        params = EXPECTED[name][0]
        recipe = load_recipe(name)
        bound = bind_params(recipe, params)
        png = figures.draw(name, params, run_recipe(con, name, bound), tmp_path / f"{name}.png")
        width, height = struct.unpack(">II", png.read_bytes()[16:24])
        assert width <= figures.MAX_PNG_WIDTH and height <= figures.MAX_PNG_HEIGHT, (name, width, height)
        assert max(width / figures.MAX_PNG_WIDTH, height / figures.MAX_PNG_HEIGHT) > 0.5, (
            name,
            width,
            height,
        )
        assert png_dpi(png) == 300


def test_twelve_and_more_runs_each_get_their_own_line_style_and_legend_entry(tmp_path):
    """The overview's loss chart over 15 runs: every run a distinct (colour, dash) pair, all 15 named once
    in one legend, in the natural order (seed2 before seed10)."""
    runs = [f"embedded.embedded-s.seed{i}" for i in range(1, 16)]
    rows = [{"run_id": run, "step": step, "value": 5.0 / (1 + step / (100 + i))} for i, run in enumerate(runs)
            for step in range(0, 501, 100)]  # fmt: skip
    spec = figures.scalar_figure(rows, "loss")
    colour, dash = spec["encoding"]["color"], spec["encoding"]["strokeDash"]
    assert colour["scale"]["domain"] == dash["scale"]["domain"] == runs
    styles = {
        (c, json.dumps(d)) for c, d in zip(colour["scale"]["range"], dash["scale"]["range"], strict=True)
    }
    assert len(styles) == 15
    svg = figures.save_figure(spec, tmp_path / "runs.svg", "svg").read_text()
    assert svg.count('class="mark-group role-legend"') == 1
    legend = html.unescape(svg[svg.index("role-legend") :])
    assert all(legend.count(f">{run}<") == 1 for run in runs), "each run named once in the legend"
    assert set(colours(spec)) <= ALLOWED_COLOURS


def bands_drawn(spec: dict) -> dict[str, tuple[str, str]]:
    """Each band of a bands figure: its legend name -> (the field of its lower edge, of its upper edge)."""
    found = {}
    stack = [spec]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            encoding, mark = node.get("encoding", {}), node.get("mark")
            if (
                mark == "area" or (isinstance(mark, dict) and mark.get("type") == "area")
            ) and "y2" in encoding:
                found[encoding["color"]["datum"]] = (encoding["y"]["field"], encoding["y2"]["field"])
            stack += list(node.values())
        elif isinstance(node, list):
            stack += node
    return found


def test_the_convergence_bands_are_the_percentiles_their_legend_names(con):
    """Figure 1's bands: the outer one spans the 10th to the 90th percentile of the layers' CKA, the
    inner one the 25th to the 75th; each percentile is the quantile of the layers' values at that step."""
    recipe = load_recipe("layer_percentiles")
    bound = bind_params(recipe, {"reference_step": 2000})
    table = run_recipe(con, "layer_percentiles", bound)
    spec = figures.recipe_figure(recipe, bound, table)
    assert bands_drawn(spec) == {
        "10th-90th percentile of layers": ("p10", "p90"),
        "25th-75th percentile of layers": ("p25", "p75"),
    }
    layers = run_recipe(con, "convergence", bind_params(load_recipe("convergence"), {"reference_step": 2000}))
    values: dict[tuple, list[float]] = {}
    for row in layers.to_pylist():
        if row["head"] is None and row["cka"] is not None:
            values.setdefault((row["run_id"], row["site"], row["step"]), []).append(row["cka"])
    checked = 0
    for row in table.to_pylist():
        cka = values.get((row["run_id"], row["site"], row["step"]))
        if not cka or row.get("head") is not None:
            continue
        want = np.quantile(cka, [0.1, 0.25, 0.5, 0.75, 0.9])  # linear interpolation: DuckDB's quantile_cont
        got = [row[p] for p in ("p10", "p25", "p50", "p75", "p90")]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
        checked += 1
    assert checked >= 10
