"""Closed sets of values: one Enum each, checked when the config is composed, before anything is
written or any worker starts."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES

from layerlake.cli.main import main
from layerlake.conf import schema
from layerlake.core import choices
from layerlake.etl.driver import run_extract

# (override, the key the error must name)
BAD_CHOICES = [
    ("executor=local executor.kind=rey", "executor.kind"),
    ("executor.dtype=float8", "executor.dtype"),
    ("executor.device=gpu", "executor.device"),
    ("extract.estimators=[biasd]", "extract.estimators"),
    ("extract.kernels=[cosine]", "extract.kernels"),
    ("extract.v_slice=last_third", "extract.v_slice"),
    ("extract.autocast=float8", "extract.autocast"),
    ("extract.matmul_precision=tf16", "extract.matmul_precision"),
    ("extract.sites=[ov,mlp]", "extract.sites"),
    ("probe.positions=first", "probe.positions"),
    ("probe.source=web", "probe.source"),
    ("suite.source=ftp", "suite.source"),
    ("extract.sitez=[ov]", "extract.sitez"),
    ("executor=rey", "executor=rey"),
]


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def extracted(tiny_suite, tmp_path_factory):
    settings, suites = tiny_suite
    data = tmp_path_factory.mktemp("choices-data")
    paths = dataclasses.replace(
        settings.paths, data=str(data), warehouse=str(data / "warehouse"), runs=str(data / "runs")
    )
    settings = dataclasses.replace(
        settings, paths=paths, steps=dataclasses.replace(settings.steps, only=[0, 32])
    )
    assert run_extract(settings).ok
    overrides = [f"paths.data={data}", f"paths.suites={suites}", *TINY_OVERRIDES, "steps.only=[0,32]"]
    return data / "warehouse", overrides


@pytest.mark.parametrize(("bad", "key"), BAD_CHOICES)
def test_a_bad_choice_fails_before_anything_is_written(extracted, bad, key, capsys):
    root, overrides = extracted
    before = snapshot(root)
    assert main(["extract", *overrides, *bad.split()]) == 2
    err = capsys.readouterr().err
    assert key in err and "fix:" in err and "Traceback" not in err
    assert snapshot(root) == before


def test_every_closed_set_of_the_schema_is_a_choice():
    """No config field that takes one of a few values is a plain string."""
    closed = {
        ("ExecutorConfig", "kind"), ("ExecutorConfig", "dtype"), ("ExtractConfig", "sites"),
        ("ExtractConfig", "kernels"), ("ExtractConfig", "estimators"), ("ExtractConfig", "v_slice"),
        ("ProbeConfig", "positions"), ("ProbeConfig", "source"), ("SuiteConfig", "source"),
        ("PlotConfig", "format"), ("ModelSpec", "architecture"),
    }  # fmt: skip
    for cls_name, field in closed:
        hint = typing.get_type_hints(getattr(schema, cls_name))[field]
        inner = typing.get_args(hint)[0] if typing.get_args(hint) else hint
        assert isinstance(inner, type) and issubclass(inner, choices.Choice), (cls_name, field, hint)


def test_choices_print_and_serialise_as_their_value():
    import json

    assert str(choices.Site.ov) == f"{choices.Site.ov}" == "ov" == choices.Site.ov
    assert json.dumps({"k": choices.Estimator.debiased}) == '{"k": "debiased"}'
    assert all(member.doc for kind in choices.Choice.__subclasses__() for member in kind)
