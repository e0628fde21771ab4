"""A hub suite's checkpoints, listed from each repo's refs instead of written into its config.

Suites publish one git branch per checkpoint, named in their own way (Pythia and PolyPythias
``step143000``; OLMo ``step20000-tokens84B``; OLMo 2 ``stage1-step5000-tokens21B``; Stanford CRFM's
GPT-2 runs ``checkpoint-400000``). ``suite.revisions.pattern`` is a regular expression a checkpoint's
branch name matches in full, whose group ``step`` is its training step. The refs come from the hub
(``HfApi.list_repo_refs``); offline, or when the hub is unreachable, from the local hub cache, which
keeps one file per ref it has fetched (``models--<org>--<name>/refs/<branch>``). A schedule then picks
the checkpoints to use: all, about ``count`` spaced evenly in log(step), or every k-th.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from layerlake.conf.schema import RevisionsConfig
from layerlake.core.choices import StepSchedule
from layerlake.etl.errors import SuiteError


def list_refs(repo: str, cache_dir: str, local_only: bool) -> list[str]:
    """The branch and tag names of hub model ``repo``: from the hub, or, with ``local_only`` (offline)
    or when it cannot be reached, from the local hub cache at ``cache_dir``."""
    if not local_only:
        try:
            from huggingface_hub import HfApi

            refs = HfApi().list_repo_refs(repo)
            return [r.name for r in (*refs.branches, *refs.tags)]
        except Exception:  # no such repo, no network: what the cache holds is all there is
            pass
    folder = Path(cache_dir) / f"models--{repo.replace('/', '--')}" / "refs"
    return (
        sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        if folder.is_dir()
        else []
    )


def checkpoint_revisions(refs: list[str], pattern: str) -> dict[int, str]:
    """step -> revision name, for each ref matching ``pattern`` in full (its ``step`` group)."""
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise SuiteError(
            f"suite.revisions.pattern {pattern!r} is not a regular expression ({error})",
            fix=r"write it as a Python regular expression with a (?P<step>\d+) group, e.g. step(?P<step>\d+)",
        ) from error
    if "step" not in compiled.groupindex:
        raise SuiteError(
            f"suite.revisions.pattern {pattern!r} has no group named step",
            fix=r"mark the step with (?P<step>\d+), e.g. step(?P<step>\d+)-tokens\d+B",
        )
    found: dict[int, str] = {}
    for name in refs:
        match = compiled.fullmatch(name)
        if match:
            found.setdefault(int(match["step"]), name)
    return dict(sorted(found.items()))


def pick(steps: list[int], rule: RevisionsConfig) -> list[int]:
    """The steps ``rule.schedule`` keeps of ``steps`` (ascending); the first and the last always.

    >>> from layerlake.conf.schema import RevisionsConfig
    >>> pick([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000], RevisionsConfig(schedule="every_kth", every=5))
    [0, 16, 512, 3000]
    >>> pick(list(range(0, 10001, 100)), RevisionsConfig(schedule="log_spaced", count=5))
    [0, 100, 1000, 10000]
    """
    steps = sorted(set(steps))
    if len(steps) <= 2 or rule.schedule == StepSchedule.all:
        return steps
    if rule.schedule == StepSchedule.every_kth:
        kept = steps[:: max(1, rule.every)]
    else:  # log_spaced: the step nearest (in log) to each of `count` points spaced evenly in log(step + 1)
        top = math.log1p(steps[-1])
        targets = [top * i / max(1, rule.count - 1) for i in range(rule.count)]
        kept = [min(steps, key=lambda s, t=t: abs(math.log1p(s) - t)) for t in targets]
    return sorted({steps[0], *kept, steps[-1]})


def discover(
    repo: str, rule: RevisionsConfig, where: str, cache_dir: str, local_only: bool
) -> dict[int, str]:
    """step -> revision of every checkpoint of ``repo`` (before the schedule); an error naming the repo
    and the pattern when none is found."""
    refs = list_refs(repo, cache_dir, local_only)
    found = checkpoint_revisions(refs, rule.pattern)
    if not found:
        shown = (
            ", ".join(refs[:8]) + (" ..." if len(refs) > 8 else "")
            if refs
            else "none (not reachable or not cached)"
        )
        raise SuiteError(
            f"{where}: no revision of {repo} matches suite.revisions.pattern {rule.pattern!r}; its refs: {shown}",
            fix="check the repo id and the pattern (the model card names the checkpoint branches), or go online",
        )
    return found
