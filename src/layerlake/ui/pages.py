"""The UI's HTML: one shell per page (navigation, a title, the elements its script fills). Every text
from data or from a recipe's header is escaped; the data itself arrives as JSON and is put into the
page as text nodes by ``static/app.js``, never as markup."""

from __future__ import annotations

import json
from html import escape
from typing import Any

# Pages that show one recipe's figure under a name of their own: path -> (recipe, title)
FIGURE_PAGES = {
    "/convergence": ("layer_percentiles", "convergence"),
    "/heatmap": ("convergence", "layer × step"),
    "/matrix": ("step_similarity", "checkpoint × checkpoint"),
    "/ranks": ("rank_trajectories", "rank trajectories"),
}
NAV = (
    ("/", "overview"),
    *((path, title) for path, (_, title) in FIGURE_PAGES.items()),
    ("/runs", "runs"),
    ("/sweep", "sweeps"),
    ("/compare", "compare runs"),
    ("/recipes", "recipes"),
    ("/sql", "SQL console"),
)


def shell(title: str, body: str, script: str, module: str = "app.js") -> str:
    """A page: ``module`` (a file of ``static/``) fills it; ``script`` names the page for it."""
    links = " ".join(f'<a href="{href}">{escape(text)}</a>' for href, text in NAV)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>layerlake · {escape(title)}</title>
<link rel="stylesheet" href="/static/style.css">
<script type="module" src="/static/vega.js"></script>
<script type="module" src="/static/{escape(module)}"></script>
</head><body data-page="{escape(script)}">
<nav><strong>layerlake</strong> {links}</nav>
<main><h1>{escape(title)}</h1>
{body}
<p id="status" class="status"></p>
</main></body></html>"""


def overview() -> str:
    return shell(
        "overview",
        '<section><h2>training loss</h2><div id="chart"></div></section>'
        '<section><h2>models and checkpoints</h2><div id="models"></div></section>'
        '<section><h2>runs</h2><div id="runs"></div></section>'
        '<section><h2>what is stored</h2><div id="counts"></div></section>',
        "overview",
    )


def runs_table() -> str:
    return shell(
        "runs",
        '<form id="runs-filter" class="filters">'
        '<label>search<br><input id="search" name="search" size="24" placeholder="any text"></label>'
        '<label>filter <span class="hint" title="comma-separated terms: column op value; op is one of '
        '= != &gt; &gt;= &lt; &lt;= ~ (contains); config., last. and tag. columns may drop their prefix">(?)</span>'
        '<br><input id="filter" name="filter" size="48" placeholder="lr > 1e-3, status = finished"></label>'
        '<details id="columns"><summary>columns</summary><div id="column-list"></div></details>'
        '<button type="button" id="compare">compare selected</button></form>'
        '<p id="shared" class="hint"></p><div id="table" class="runs"></div>',
        "runs_table",
        "runs.js",
    )


def run(run_id: str) -> str:
    return shell(
        run_id,
        f'<div id="run-page" data-run="{escape(run_id)}">'
        '<p id="badge"></p>'
        '<section class="two"><div><h2>run</h2><div id="facts"></div></div>'
        '<div><h2>tags and notes</h2><div id="tags"></div><div id="notes"></div></div></section>'
        '<section><h2>logged values</h2><p id="logged-note" class="hint"></p><div id="logged"></div></section>'
        '<section><h2>snapshots</h2><div id="snapshots"></div></section>'
        '<section><h2>CKA of each layer to the final snapshot</h2><div id="cka"></div></section>'
        '<section><h2>rank trajectories</h2><div id="ranks"></div></section>'
        '<section class="two"><div><h2>config</h2><div id="config"></div></div>'
        '<div><h2>overrides</h2><div id="overrides"></div></div></section></div>',
        "run",
        "runs.js",
    )


def sweep() -> str:
    return shell(
        "sweep",
        '<form id="sweep-form"><label>sweep<br><select id="sweep-dir" name="dir"></select></label>'
        '<label>outcome<br><select id="outcome" name="outcome"></select></label></form>'
        '<section class="two"><div id="chart"></div><div id="result"></div></section>',
        "sweep",
        "runs.js",
    )


def compare() -> str:
    return shell(
        "compare runs",
        '<form id="runs-form"><div id="run-list"></div>'
        '<label>logged value<br><select id="scalar" name="name"></select></label> '
        '<button type="submit">compare</button></form><div id="chart"></div>',
        "runs",
    )


def sql_console() -> str:
    return shell(
        "SQL console",
        '<form id="sql-form"><textarea id="q" name="q" rows="6" cols="100" spellcheck="false">'
        "select model, count(*) as checkpoints from checkpoints group by model order by model</textarea>"
        '<br><button type="submit">run</button> <span class="hint">read-only; the same limits as '
        "<code>layerlake sql</code></span></form>"
        '<div id="result"></div><div id="pager"></div>',
        "sql",
    )


def recipes() -> str:
    from layerlake.queries.loader import list_recipes

    items = "".join(
        f'<li><a href="/recipe?name={escape(r.name)}">{escape(r.name)}</a>: {escape(r.description)}</li>'
        for r in list_recipes()
    )
    return shell("recipes", f"<ul class='recipes'>{items}</ul>", "recipes")


def recipe_form(
    recipe: Any,
    stored: dict[str, list[Any]] | None = None,
    title: str | None = None,
    scoped: dict[str, dict[str, list[Any]]] | None = None,
    empty: str = "",
) -> str:
    """A recipe's parameters as a form: a select for a closed set or for what the warehouse stores
    (``stored``: parameter -> its stored values; a list parameter takes several), a text field else.
    ``scoped`` (parameter -> model -> values): the values each model holds, which the page's script
    offers when that model is chosen (its layers only); the first options are the preselected model's.
    ``empty``: why the form cannot run yet (nothing of what it draws is stored), shown instead of a figure."""
    from layerlake.queries.figures import measures

    stored = stored or {}
    model = preselected(recipe.param("model"), stored.get("model")) if recipe.param("model") else ""
    fields = []
    for p in recipe.params:
        hint = escape(f"{p.describe_type()}; {p.doc}")  # shown on hover: the form stays one or two rows
        label = f"{escape(p.name)} <span class='hint'>(?)</span>"
        default = "" if p.default is None else escape(_text(p.default))
        choices = ("true", "false") if p.base == "boolean" and not p.is_list else p.choices
        if p.name in stored and stored[p.name]:
            held = stored[p.name]
            if scoped and p.name in scoped and model in scoped[p.name]:
                held = scoped[p.name][model] or held  # the preselected model's own values
            values = [_text(v) for v in held]
            chosen = preselected(p, held)
            # optional: a blank means its default; where that default is a value (source = computed),
            # null is offered by name instead (null = every source side by side)
            single = p.optional and not p.is_list
            every = p.name if single and p.default is not None else None
            control = _select(
                p.name, values, chosen, blank=single and not every, multiple=p.is_list, every=every
            )
        elif choices is not None and not p.is_list:
            control = _select(p.name, list(choices), default, blank=p.optional)
        else:
            control = f"<input name='{escape(p.name)}' value='{default}' placeholder='{default or 'all'}'>"
        fields.append(f"<label title='{hint}'>{label}<br>{control}</label>")
    offered = measures(recipe.plot)
    if offered:
        fields.insert(0, "<label>measure <span class='hint'>(what the figure plots)</span><br>"
                         f"{_select('measure', offered, offered[0])}</label>")  # fmt: skip
    scoped_json = json.dumps(
        {n: {m: [_text(v) for v in vs] for m, vs in by.items()} for n, by in (scoped or {}).items()}
    )
    heading = (
        f"<p class='hint'>recipe <a href='/recipe?name={escape(recipe.name)}'>{escape(recipe.name)}</a></p>"
    )
    body = (
        (heading if title and title != recipe.name else "") + f"<p>{escape(recipe.description)}</p>"
        f"<form id='recipe-form' data-recipe='{escape(recipe.name)}' data-scoped='{escape(scoped_json)}'"
        f" data-empty='{escape(empty)}'>"
        f"{''.join(fields)}"
        "<button type='submit'>run</button></form>"
        "<p id='downloads'></p><div id='panel-pager' class='pager'></div><div id='chart'></div>"
        "<div id='result'></div>"
    )
    return shell(title or recipe.name, body, "recipe")


def preselected(param: Any, stored: list[Any] | None) -> str:
    """The value a form shows for ``param`` before anyone touches it (what its first run sends): the
    default when the warehouse stores it (or stores nothing of the kind), else the first stored value
    (a warehouse of imported metrics only: its first source, not ``computed``, which it lacks); for a
    required parameter without a default, the first stored value (the first model ...)."""
    if param.default is not None:
        default = _text(param.default)
        if stored and not param.is_list and default not in (_text(v) for v in stored):
            return _text(stored[0])
        return default
    if stored and not param.optional and not param.is_list:
        return _text(stored[0])
    return ""


def _select(
    name: str,
    values: list[str],
    chosen: str,
    blank: bool = False,
    multiple: bool = False,
    every: str | None = None,
) -> str:
    options = "".join(f"<option{' selected' if v == chosen else ''}>{escape(v)}</option>" for v in values)
    if blank:
        options = "<option value=''>(default)</option>" + options
    if every:  # sends null, which the parameter reads as "all of them"
        options += f"<option value='null'>(every {escape(every)})</option>"
    more = f" multiple size='{min(len(values), 5)}' title='none chosen = all'" if multiple else ""
    return f"<select name='{escape(name)}'{more}>{options}</select>"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)
