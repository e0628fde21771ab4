"""The human and machine descriptions of an export: ``README.md`` (a Hugging Face dataset card) and
``croissant.json`` (MLCommons Croissant 1.0).

The card's YAML header declares one ``datasets`` config per table the export holds (``data_files:
<table>/**/*.parquet``; a table without files gets none, as its glob would match nothing and fail to
load), so ``datasets.load_dataset(DIR, "<table>")`` loads it; its body says what is inside (models, steps,
sites, estimators, sizes), how to read it without layerlake, and one example query that runs as is.
Column descriptions come from ``warehouse/schema.py``, so the card cannot drift from the contract.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from layerlake.warehouse import schema
from layerlake.warehouse.layout import SHARD_PATTERN
from layerlake.warehouse.manifest import CommitEntry, read_task_rows
from layerlake.warehouse.views import duck_type


@dataclass
class Summary:
    """What an export holds, read from its files (not from the warehouse it came from)."""

    models: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (suite, model) -> facts
    values: dict[str, set] = field(default_factory=dict)  # "site", "kernel", ... -> distinct values


# Distinct values worth stating in the card: summary name -> (table, column).
_DISTINCT = {
    "sites": (("activation_stats", "site"), ("sketches", "site")),
    "kernels": (("sketches", "kernel"),),
    "estimators": (("sketches", "estimator"),),
    "probe rows (n)": (("sketches", "n"), ("activation_stats", "n")),
    "matrices": (("spectra", "matrix"),),
    "tensors": (("spectra", "tensor"),),
    "probes": (("probes", "probe_id"),),
}
_FACTS = ("architecture", "n_layers", "d_model", "n_heads", "n_params")


def summarize(folder: Path, entries: list[CommitEntry]) -> Summary:
    """Models (with their steps and shapes) and the distinct sites, kernels, ... of the files in ``folder``."""
    summary = Summary()
    for entry in entries:
        facts = summary.models.setdefault((entry.suite, entry.model), {"steps": set()})
        if isinstance(entry.meta.get("step"), int):
            facts["steps"].add(entry.meta["step"])
        for f in entry.files:
            if f.table == "checkpoints":
                for row in read_task_rows(folder, f, columns=["step", *_FACTS]).to_pylist():
                    facts["steps"].add(row.pop("step"))
                    facts.update(row)
            for name, sources in _DISTINCT.items():
                for table, column in sources:
                    if f.table == table:
                        values = read_task_rows(folder, f, columns=[column]).column(column).unique()
                        summary.values.setdefault(name, set()).update(
                            v for v in values.to_pylist() if v is not None
                        )
    return summary


def steps_text(steps: Iterable[int]) -> str:
    """``0, 1, 2, 4 ... 143000 (27 steps)``: short, but says the range and the count."""
    ordered = sorted(steps)
    if not ordered:
        return "-"
    if len(ordered) <= 8:
        return ", ".join(map(str, ordered))
    head, tail = ", ".join(map(str, ordered[:4])), ", ".join(map(str, ordered[-2:]))
    return f"{head} ... {tail} ({len(ordered)} steps)"


def size_text(n: int) -> str:
    """``1.5 MiB``: a byte count for people."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def header(manifest: dict[str, Any]) -> str:
    """The YAML front matter: one ``datasets`` config per table the export holds, plus tags (text built by hand, no YAML lib)."""
    lines = ["---", "pretty_name: layerlake per-layer checkpoint statistics", "tags:"]
    lines += [
        f"- {t}" for t in ("layerlake", "training-dynamics", "interpretability", "cka", "effective-rank")
    ]
    lines += ["configs:"]
    for name in manifest["tables"]:
        lines += [f"- config_name: {name}", f'  data_files: "{name}/**/*.parquet"']
    return "\n".join(lines + ["---", ""])


def example_query(summary: Summary) -> str:
    """A query that runs as is from inside the folder with plain DuckDB (no layerlake macros)."""
    estimators = sorted(summary.values.get("estimators", ()))
    if not estimators:
        return (
            "-- every checkpoint in the dataset, with its identity\n"
            "select suite, model, step, revision, weights_sha256\n"
            "from read_parquet('checkpoints/**/*.parquet')\norder by suite, model, step;"
        )
    # The recipes' default estimator (the paper's biased HSIC), or the one the dataset holds.
    estimator = "biased" if "biased" in estimators else estimators[0]
    return f"""-- Linear CKA ({estimator} estimator, as layerlake's recipes by default) of every layer's
-- representation at every step against the same layer at the run's last step: the cosine of two
-- stored centred Gram matrices, <A, B> / (|A| |B|). A Gram is stored as little-endian float32 bytes;
-- plain SQL decodes them from their hex digits, which is slow on large exports: in Python,
-- numpy.frombuffer(gram, '<f4') reads them as they are.
with s as (
    select *, hex(gram) as h from read_parquet('sketches/**/*.parquet')
    where kernel = 'linear' and estimator = '{estimator}' and head is null
), bits as (  -- value i's four bytes, most significant first, as an integer
    select *, list_transform(range(octet_length(gram) // 4), lambda i: ('0x' || substr(h, 8 * i + 7, 2)
        || substr(h, 8 * i + 5, 2) || substr(h, 8 * i + 3, 2) || substr(h, 8 * i + 1, 2))::UBIGINT) as u
    from s
), decoded as (  -- IEEE 754 single precision: sign, 8 exponent bits, 23 fraction bits
    select *, list_transform(u, lambda x: (case when x >= 2147483648 then -1.0 else 1.0 end)
        * (case when (x >> 23) & 255 = 0 then (x & 8388607) * pow(2, -149)
                else ((x & 8388607) + 8388608) * pow(2, ((x >> 23) & 255)::INTEGER - 150) end)) as values
    from bits
), last_step as (
    select run_id, max(step) as step from decoded group by run_id
), final as (
    select d.* from decoded as d join last_step using (run_id, step)
)
select s.model, s.run_id, s.site, s.layer, s.step,
       list_dot_product(s.values, final.values) / (s.gram_norm * final.gram_norm) as cka
from decoded as s join final
  on s.run_id = final.run_id and s.layer = final.layer and s.site = final.site
 and s.probe_id = final.probe_id and s.n = final.n
order by s.model, s.run_id, s.site, s.layer, s.step;"""


def render_card(manifest: dict[str, Any], summary: Summary) -> str:
    """The whole ``README.md``."""
    parts = [header(manifest), "# layerlake per-layer checkpoint statistics", "",
             "Per-layer statistics of language-model training checkpoints (activation summaries, centred Gram",
             "matrices for CKA, weight spectra), exported by layerlake "
             f"(`{manifest['created_by']}`, {manifest['created_at']}).",
             f"Dataset id `{manifest['dataset_id']}`, schema version {manifest['schema_version']}. "
             "`manifest.json` lists every file with its sha256, rows and bytes, and the provenance of every",
             "checkpoint (source, revision, weights sha256, probe id, code version, config hash).", ""]  # fmt: skip
    parts += (
        _license(manifest) + _contents(manifest, summary) + _reading(manifest, summary) + _columns(manifest)
    )
    return "\n".join(parts) + "\n"


def _license(manifest: dict[str, Any]) -> list[str]:
    """The export's license and citation, then each imported source's own (they keep theirs)."""
    lines = ["## License and citation", "", f"License: `{manifest['license']}`. Cite it as:", "", "```bibtex",
             manifest["citation"], "```", ""]  # fmt: skip
    for source in manifest.get("sources", ()):
        lines += [f"Rows of source `{source['source']}` ({', '.join(source['models'])}) were imported from elsewhere "
                  f"and keep their own terms: license `{source.get('license', 'not stated')}`."]  # fmt: skip
        if source.get("citation"):
            lines += ["Cite them as:", "", "```", source["citation"], "```"]
        lines.append("")
    return lines


def _contents(manifest: dict[str, Any], summary: Summary) -> list[str]:
    lines = ["## Contents", "", "| suite | model | architecture | layers | d_model | parameters | steps |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for (suite, model), f in sorted(summary.models.items()):
        shape = [f.get(k, "-") for k in ("architecture", "n_layers", "d_model", "n_params")]
        lines.append(f"| {suite} | {model} | {' | '.join(map(str, shape))} | {steps_text(f['steps'])} |")
    lines += [""] + [f"- {name}: {', '.join(map(str, sorted(v)))}" for name, v in summary.values.items() if v]
    lines += ["", "| table | files | rows | size |", "| --- | --- | --- | --- |"]
    for name, t in manifest["tables"].items():
        lines.append(f"| {name} | {t['files']} | {t['rows']} | {size_text(t['bytes'])} |")
    lines += [
        "",
        f"Code versions: {recorded(manifest['checkpoints'], 'code_version')}. "
        f"Extraction config hashes: {recorded(manifest['checkpoints'], 'config_hash')}.",
        "",
    ]
    return lines


def recorded(checkpoints: list[dict[str, Any]], key: str) -> str:
    """The distinct values of ``key`` over ``checkpoints`` with how many hold each, and how many did not
    record one: ``layerlake-0.1.0 (12 checkpoints), not recorded (3 checkpoints)``; never ``None``."""
    counts: dict[str, int] = {}
    for c in checkpoints:
        value = c.get(key)
        counts[str(value) if value is not None else ""] = (
            counts.get(str(value) if value is not None else "", 0) + 1
        )
    missing = counts.pop("", 0)
    parts = [f"{value} ({n} checkpoint{'s' * (n != 1)})" for value, n in sorted(counts.items())]
    if missing:
        parts.append(f"not recorded ({missing} checkpoint{'s' * (missing != 1)})")
    return ", ".join(parts) or "-"


def _reading(manifest: dict[str, Any], summary: Summary) -> list[str]:
    table = next(iter(manifest["tables"]))
    glob = f"DIR/{table}/**/*.parquet"
    return [
        "## Reading it (no layerlake needed)", "",
        f"Every table is a folder of Parquet files, `{SHARD_PATTERN}`; every",
        "file holds all of its table's columns (`suite`, `model` and `run_id` included), so every reader",
        "returns the same columns. `DIR` is this folder.", "",
        "```python", "import duckdb",
        f"rel = duckdb.sql(\"select * from read_parquet('{glob}')\")",
        "rel.df()    # pandas      rel.pl()   # polars      rel.arrow()   # pyarrow", "",
        "import pandas as pd, polars as pl, pyarrow.dataset as ds",
        f'pd.read_parquet("DIR/{table}")',
        f'pl.read_parquet("{glob}")',
        f'ds.dataset("DIR/{table}").to_table()', "",
        "import datasets",
        f'datasets.load_dataset("DIR", "{table}")                      # one config per table', "```", "",
        "With layerlake: `layerlake share attach DIR --sql \"...\"` queries it beside your warehouse through the",
        "usual views and macros; `layerlake share import DIR` verifies it and merges it into your warehouse.", "",
        "## Example query", "", "Run from inside this folder (`duckdb` CLI or `duckdb.sql(...)`):", "",
        "```sql", example_query(summary), "```", "",
    ]  # fmt: skip


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a '|' inside a Markdown table cell would split it


def _columns(manifest: dict[str, Any]) -> list[str]:
    lines = ["## Columns", ""]
    for name in manifest["tables"]:
        spec = schema.table(name)
        lines += [f"### {name}", "", spec.doc, "", "| column | type | meaning |", "| --- | --- | --- |"]
        lines += [
            f"| {c.name} | {duck_type(c.file_type)} | {_cell(c.doc)}{' (may be NULL)' if c.nullable else ''} |"
            for c in spec.all_columns
        ]
        lines.append("")
    return lines


# --- Croissant ------------------------------------------------------------------------------------------

_CROISSANT_CONTEXT = {
    "@language": "en", "@vocab": "https://schema.org/", "sc": "https://schema.org/",
    "cr": "http://mlcommons.org/croissant/", "dct": "http://purl.org/dc/terms/",
    "citeAs": "cr:citeAs", "column": "cr:column", "conformsTo": "dct:conformsTo",
    "data": {"@id": "cr:data", "@type": "@json"}, "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "examples": {"@id": "cr:examples", "@type": "@json"}, "extract": "cr:extract", "field": "cr:field",
    "fileProperty": "cr:fileProperty", "fileObject": "cr:fileObject", "fileSet": "cr:fileSet",
    "format": "cr:format", "includes": "cr:includes", "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath", "key": "cr:key", "md5": "cr:md5", "parentField": "cr:parentField",
    "path": "cr:path", "recordSet": "cr:recordSet", "references": "cr:references", "regex": "cr:regex",
    "repeated": "cr:repeated", "replace": "cr:replace", "separator": "cr:separator", "source": "cr:source",
    "subField": "cr:subField", "transform": "cr:transform", "rai": "http://mlcommons.org/croissant/RAI/",
    "samplingRate": "cr:samplingRate", "equivalentProperty": "cr:equivalentProperty",
}  # fmt: skip


def _croissant_type(type_: pa.DataType) -> str:
    inner = type_.value_type if pa.types.is_list(type_) else type_
    if pa.types.is_integer(inner):
        return "sc:Integer"
    return "sc:Float" if pa.types.is_floating(inner) else "sc:Text"


def croissant(manifest: dict[str, Any], summary: Summary) -> dict[str, Any]:
    """Croissant 1.0 metadata: one FileSet and one RecordSet per table (every column in the files)."""
    models = ", ".join(f"{s}/{m}" for s, m in sorted(summary.models))
    distribution, record_sets = [], []
    for name in manifest["tables"]:
        spec, files_id = schema.table(name), f"{name}-files"
        distribution.append({"@type": "cr:FileSet", "@id": files_id, "name": files_id,
                             "encodingFormat": "application/x-parquet", "includes": f"{name}/**/*.parquet"})  # fmt: skip
        fields = [
            {"@type": "cr:Field", "@id": f"{name}/{c.name}", "name": c.name, "description": c.doc,
             "dataType": _croissant_type(c.type), **({"repeated": True} if pa.types.is_list(c.type) else {}),
             "source": {"fileSet": {"@id": files_id}, "extract": {"column": c.name}}}
            for c in spec.all_columns
        ]  # fmt: skip
        record_sets.append(
            {"@type": "cr:RecordSet", "@id": name, "name": name, "description": spec.doc, "field": fields}
        )
    return {
        "@context": _CROISSANT_CONTEXT, "@type": "sc:Dataset", "conformsTo": "http://mlcommons.org/croissant/1.0",
        "name": f"layerlake-{manifest['dataset_id']}", "version": f"{manifest['schema_version']}.0.0",
        "description": f"Per-layer statistics of training checkpoints of {models}, exported by {manifest['created_by']}.",
        "datePublished": manifest["created_at"], "distribution": distribution, "recordSet": record_sets,
        "license": [f"https://spdx.org/licenses/{manifest['license']}.html",
                    *(f"https://spdx.org/licenses/{s['license']}.html" for s in manifest.get("sources", ()) if s.get("license"))],
        "citeAs": "\n\n".join([manifest["citation"], *(s["citation"] for s in manifest.get("sources", ()) if s.get("citation"))]),
    }  # fmt: skip
