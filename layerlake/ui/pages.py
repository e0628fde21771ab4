"""The UI's HTML: one shell per page (navigation, a title, the elements its script fills). Every text
from data or from a recipe's header is escaped; the data itself arrives as JSON and is put into the
page as text nodes by ``static/app.js``, never as markup."""

from __future__ import annotations

from html import escape
from typing import Any

NAV = (("/", "overview"), ("/runs", "compare runs"), ("/recipes", "recipes"), ("/sql", "SQL console"))


def shell(title: str, body: str, script: str) -> str:
    links = " ".join(f'<a href="{href}">{escape(text)}</a>' for href, text in NAV)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>layerlake · {escape(title)}</title>
<link rel="stylesheet" href="/static/style.css">
<script type="module" src="/static/vega.js"></script>
<script type="module" src="/static/app.js"></script>
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


def runs() -> str:
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


def recipe_form(recipe: Any) -> str:
    fields = []
    for p in recipe.params:
        label = f"{escape(p.name)} <span class='hint'>({escape(p.describe_type())}; {escape(p.doc)})</span>"
        default = "" if p.default is None else escape(_text(p.default))
        choices = ("true", "false") if p.base == "boolean" and not p.is_list else p.choices
        if choices is not None and not p.is_list:
            options = "".join(
                f"<option{' selected' if c == default else ''}>{escape(c)}</option>" for c in choices
            )
            blank = "<option value=''></option>" if p.optional else ""
            control = f"<select name='{escape(p.name)}'>{blank}{options}</select>"
        else:
            control = f"<input name='{escape(p.name)}' value='{default}' placeholder='{default or 'all'}'>"
        fields.append(f"<label>{label}<br>{control}</label>")
    body = (
        f"<p>{escape(recipe.description)}</p>"
        f"<form id='recipe-form' data-recipe='{escape(recipe.name)}'>{''.join(fields)}"
        "<button type='submit'>run</button></form>"
        "<p id='downloads'></p><div id='chart'></div><div id='result'></div>"
    )
    return shell(recipe.name, body, "recipe")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)
