"""Turns the composed config into the list of extraction tasks (one per model checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass

from layerlake.conf.schema import Config, ModelSpec
from layerlake.core.provenance import layerlake_version
from layerlake.etl.errors import SuiteError
from layerlake.etl.task import ExtractOptions, ExtractTask, ProbeBatch

CODE_VERSION = f"layerlake-{layerlake_version()}"  # recorded with every checkpoint's rows (extracted or live)


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
        store_activations=ex.store_activations,
        spectra_precision=ex.spectra_precision,
        matmul_precision=ex.matmul_precision,
        autocast=ex.autocast,
        device=run.device,
        dtype=run.dtype,
        torch_threads=run.torch_threads,
    )


def make_plan(settings: Config) -> Plan:
    """Every (model, step) the config selects, with the one probe batch they all share."""
    from layerlake.etl.probes import build_probe
    from layerlake.etl.sources import open_source

    models = selected_models(settings)
    source = open_source(settings.suite, settings.paths.suites)
    probe = build_probe(settings.probe, settings.suite, settings.paths.suites, [m.name for m in models])
    options = extract_options(settings)
    tasks = tuple(
        ExtractTask(ref=ref, probe=probe, options=options, code_version=CODE_VERSION)
        for model in models
        for ref in source.refs(model.name, source.plan_steps(model.name, settings.steps))
    )
    return Plan(suite=settings.suite.name, models=tuple(m.name for m in models), probe=probe, tasks=tasks)
