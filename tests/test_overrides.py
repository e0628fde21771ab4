"""Long list overrides parse in linear time, to the same values Hydra's own visitor gives."""

from __future__ import annotations

import pytest
from antlr4.ParserRuleContext import ParserRuleContext
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.overrides_visitor import HydraOverrideVisitor

from layerlake.conf import overrides

CASES = [
    "models=[a,b,c]",
    "x=[]",
    'x=[1, 2.5, true, null, \'q,uoted\', "d\\"q"]',
    "x=[[1,2],[3,[4,5]],{a:1,b:[6,7]}]",
    "x=[a,b],[c,d]",
    "x=choice([1,2],[3])",
    "x=[${oc.env:HOME},b]",
    "x={k:[1,2,3]}",
    "x=range(0,10,2)",
]


def parse(text: str):
    return OverridesParser.create().parse_override(text)


@pytest.mark.parametrize("text", CASES)
def test_the_same_values_as_hydras_visitor(text):
    overrides.linear_list_parsing()
    linear = parse(text)
    HydraOverrideVisitor.visitListContainer = overrides.hydra_list_visitor
    try:
        hydra = parse(text)
    finally:
        overrides._installed = False
        overrides.linear_list_parsing()
    assert linear.value() == hydra.value() and linear.key_or_group == hydra.key_or_group
    assert linear.is_sweep_override() == hydra.is_sweep_override()


def children_visited(n: int) -> int:
    """How many parse-tree children are stepped over while a list of ``n`` names is read."""
    visited = 0
    original = ParserRuleContext.getChildren

    def counted(self, predicate=None):
        nonlocal visited
        for child in original(self, predicate):
            visited += 1
            yield child

    ParserRuleContext.getChildren = counted
    try:
        parse("models=[" + ",".join(f"m{i}" for i in range(n)) + "]")
    finally:
        ParserRuleContext.getChildren = original
    return visited


def test_list_parsing_is_linear_in_the_length_of_the_list():
    overrides.linear_list_parsing()
    small, large = children_visited(1_000), children_visited(4_000)
    assert large <= 4.5 * small  # quadratic parsing makes it ~16 x


# Long plain lists skip the grammar and OmegaConf, yet compose to what Hydra composes.

NAMES = [f"model-{i}.x" for i in range(100)]
WITH_HYDRA = 10**12  # a LONG_LIST no list reaches: every list goes through Hydra


def composed(monkeypatch, overrides_, long_list=overrides.LONG_LIST):
    from layerlake.conf.compose import compose

    monkeypatch.setattr(overrides, "LONG_LIST", long_list)
    return compose(overrides_)


@pytest.mark.parametrize(
    "given",
    [
        [f"models=[{','.join(NAMES)}]"],
        [
            "models=[" + ",".join(str(i) for i in range(100)) + "]"
        ],  # a list[str] key: Hydra makes them strings
        ["steps.only=[" + ", ".join(str(i * 10) for i in range(100)) + "]"],
    ],
)
def test_a_lifted_list_composes_to_what_hydra_composes(monkeypatch, given):
    assert overrides.lift_long_lists(given)[1], "the list was not lifted"
    lifted = composed(monkeypatch, given)
    hydra = composed(monkeypatch, given, WITH_HYDRA)
    assert lifted == hydra


@pytest.mark.parametrize(
    "text",
    ["x=[a,true,b]", "x=[a,1,b]", "x=[a,'b',c]", "x=[a,${b},c]", "x=[[a],b]", "x=[a,b],[c]", "x=[a,nan]"],
)
def test_lists_the_grammar_must_read_are_left_to_it(text):
    items = text.partition("=")[2]
    assert overrides.plain_list(items) is None


def test_a_lifted_list_keeps_hydras_checks(monkeypatch):
    from layerlake.core.errors import ConfigError

    with pytest.raises(ConfigError, match="steps.only"):  # words for a list of integers
        composed(monkeypatch, [f"steps.only=[{','.join(NAMES)}]"])
    with pytest.raises(ConfigError, match="modles"):  # a misspelt key
        composed(monkeypatch, [f"modles=[{','.join(NAMES)}]"])


def test_a_long_list_never_reaches_the_grammar(monkeypatch):
    from layerlake.conf.compose import check_overrides

    visited = 0
    original = HydraOverrideVisitor.visitElement

    def counted(self, ctx):
        nonlocal visited
        visited += 1
        return original(self, ctx)

    monkeypatch.setattr(HydraOverrideVisitor, "visitElement", counted)
    names = ",".join(f"m{i}" for i in range(20_000))
    check_overrides([f"models=[{names}]"])
    settings = composed(monkeypatch, [f"models=[{names}]"])
    assert len(settings.models) == 20_000 and settings.models[-1] == "m19999"
    assert visited < 100


def test_a_recipe_gets_a_long_list_whole_and_the_run_folder_records_it(tmp_path, monkeypatch):
    import numpy as np
    import yaml

    from layerlake.cli.main import main
    from layerlake.warehouse.synthetic import checkpoint_tables
    from layerlake.warehouse.writer import Warehouse

    store = Warehouse(tmp_path / "warehouse")
    rng = np.random.default_rng(0)
    models = [f"m{i}" for i in range(overrides.LONG_LIST + 6)]
    for model in models:
        for step in (0, 10):
            grams = {(0, "mlp_out"): rng.normal(size=(4, 4))}
            tables = checkpoint_tables(model, step, grams, {(0, "dense"): [2.0, 1.0]}, d=4)
            store.commit(f"{model}-{step}", "embedded", model, tables, {"step": step})
    names = models[1:]  # every model but m0: a long list
    args = ["query", "stabilisation", f"paths.data={tmp_path}", "progress=false"]
    assert main([*args, f"models=[{','.join(names)}]", f"hydra.run.dir={tmp_path}/long"]) == 0
    monkeypatch.setattr(overrides, "LONG_LIST", WITH_HYDRA)
    assert main([*args, f"models=[{','.join(names)}]", f"hydra.run.dir={tmp_path}/short"]) == 0
    long, short = ((tmp_path / name / "result.csv").read_text() for name in ("long", "short"))
    assert long == short and '"m1"' in long and '"m69"' in long and '"m0"' not in long
    recorded = tmp_path / "long" / ".hydra"
    assert f"models=[{','.join(names)}]" in yaml.safe_load((recorded / "overrides.yaml").read_text())
    assert yaml.safe_load((recorded / "config.yaml").read_text())["models"] == names
