"""Turns the composed config into the list of extraction tasks (one per model checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass

from conf.schema import Config, ModelSpec
from etl.errors import SuiteError
from etl.task import ExtractOptions, ExtractTask, ProbeBatch
from layerlake.errors import ConfigError

CODE_VERSION = "layerlake-0.1.0"


@dataclass(frozen=True)
class Plan:
    suite: str
    models: tuple[str, ...]
    probe: ProbeBatch
    tasks: tuple[ExtractTask, ...]


def selected_models(settings: Config) -> list[ModelSpec]:
    """The suite's models, restricted to ``settings.models`` when given (unknown names are an error)."""
    known = {m.name: m for m in settings.suite.models}
    if settings.models is None:
        return list(known.values())
    unknown = [name for name in settings.models if name not in known]
    if unknown:
        raise SuiteError(
            f"unknown model(s) {', '.join(unknown)} in suite {settings.suite.name!r}",
            fix=f"choose from: {', '.join(known)} (e.g. models=[{next(iter(known), '')}])",
        )
    return [known[name] for name in settings.models]


def extract_options(settings: Config) -> ExtractOptions:
    ex, run = settings.extract, settings.executor
    return ExtractOptions(
        sites=tuple(ex.sites),
        per_head=ex.per_head,
        v_slice=ex.v_slice,
        gradients=ex.gradients,
        weight_spectra=ex.weight_spectra,
        kernels=tuple(ex.kernels),
        estimators=tuple(ex.estimators),
        near_zero_eps=ex.near_zero_eps,
        batch_size=ex.batch_size,
        device=run.device,
        dtype=run.dtype,
        torch_threads=run.torch_threads,
    )


def check_options(options: ExtractOptions) -> None:
    """Fail before any task runs (and before anything is recorded) when an option names nothing known."""
    from etl import metrics, sites

    unknown_sites = [s for s in options.sites if s not in sites.SITES]
    if unknown_sites or options.v_slice not in sites.V_SLICES:
        sites.check_names(options.sites, options.v_slice, sites.FAMILIES["gpt_neox"])
    for key, values, known in (
        ("extract.kernels", options.kernels, metrics.KERNELS),
        ("extract.estimators", options.estimators, metrics.ESTIMATORS),
    ):
        bad = [v for v in values if v not in known]
        if bad:
            raise ConfigError(f"unknown {key} value(s) {bad}", fix=f"use values from {list(known)}")
    if options.dtype not in ("float32", "float16", "bfloat16", "float64"):
        raise ConfigError(
            f"unknown executor.dtype {options.dtype!r}", fix="use float32, bfloat16, float16 or float64"
        )


def make_plan(settings: Config) -> Plan:
    """Every (model, step) the config selects, with the one probe batch they all share."""
    from etl.probes import build_probe
    from etl.sources import open_source, select_steps

    models = selected_models(settings)
    steps = select_steps(settings.suite, settings.steps)
    source = open_source(settings.suite, settings.paths.suites)
    probe = build_probe(settings.probe, settings.suite, settings.paths.suites)
    options = extract_options(settings)
    check_options(options)
    tasks = tuple(
        ExtractTask(ref=ref, probe=probe, options=options, code_version=CODE_VERSION)
        for model in models
        for ref in source.refs(model.name, steps)
    )
    return Plan(suite=settings.suite.name, models=tuple(m.name for m in models), probe=probe, tasks=tasks)
