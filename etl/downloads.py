"""Hub downloads after their task is recorded: deleted once committed unless kept, and a disk budget.

Workers download a hub suite's revisions into the hub cache (``HF_HUB_CACHE``, read when called).
The driver, right after it commits a task's rows (or records its failure), calls
``HubDownloads.recorded(task)``:

- unless ``suite.keep_downloads``, the task's revision is deleted from the cache when this extraction
  downloaded it, i.e. it was not in the cache when the extraction started. A revision cached before
  (the user's own download, or one an earlier run kept) is left alone. A failed task's download is
  deleted too: a re-run downloads it again, from a clean start.
- with ``suite.download_budget_gb``, the revisions of the suite's repos in the cache are deleted
  oldest first (by when their files were written), whoever downloaded them, until those repos take at
  most that many GB (10^9 bytes; files shared by revisions counted once) of the cache. A revision that
  a task of this extraction still has to record is never deleted, so the cache can exceed the budget
  by the checkpoints in flight (at most two per running worker).

Deleting goes through ``huggingface_hub``'s own cache deletion: a file another cached revision still
uses is kept. Local checkpoints are never deleted. Both act on the hub cache of the machine the driver
runs on: on a Ray cluster of several machines, each worker machine's own cache is left as it is,
unless all of them use one shared folder as ``HF_HUB_CACHE``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence

from layerlake.conf.schema import SuiteConfig
from layerlake.core.choices import SuiteSource
from layerlake.etl.sources import cached_revision, hub_cache_dir
from layerlake.etl.task import ExtractTask

GB = 10**9
log = logging.getLogger(__name__)


class HubDownloads:
    """The hub downloads of one extraction: what to delete after each task is recorded."""

    def __init__(self, suite: SuiteConfig, tasks: Sequence[ExtractTask]) -> None:
        """``tasks``: every task this extraction will run (their revisions are in flight until recorded)."""
        self.keep = suite.keep_downloads
        self.budget = None if suite.download_budget_gb is None else int(suite.download_budget_gb * GB)
        self.repos = (
            {spec.repo for spec in suite.models if spec.repo} if suite.source == SuiteSource.hf else set()
        )
        self.in_flight = Counter(
            (t.ref.location, t.ref.revision) for t in tasks if t.ref.source == SuiteSource.hf
        )
        self.cached_before = {key for key in self.in_flight if cached_revision(*key)}

    def recorded(self, task: ExtractTask) -> list[str]:
        """After ``task`` was committed (or its failure recorded): delete what is no longer kept.
        Returns the deleted revisions as ``repo@revision`` (or ``repo@commit``)."""
        ref = task.ref
        if ref.source != SuiteSource.hf:
            return []
        key = (ref.location, ref.revision)
        self.in_flight[key] -= 1
        deleted = []
        if not self.keep and key not in self.cached_before and self.in_flight[key] <= 0:
            deleted += evict_revisions(ref.location, [ref.revision])
        if self.budget is not None:
            protected = {k for k, n in self.in_flight.items() if n > 0}
            deleted += enforce_budget(self.repos | {ref.location}, self.budget, protected)
        return deleted


def _scan_cache():
    """The hub cache's listing, or None when there is no cache folder (nothing to delete)."""
    from huggingface_hub import scan_cache_dir

    try:
        return scan_cache_dir(hub_cache_dir())
    except Exception as error:  # noqa: BLE001 - no cache yet, or one it cannot read: delete nothing
        log.debug("hub cache not scanned: %s", error)
        return None


def _model_repos(info, repos: Iterable[str]) -> list:
    wanted = set(repos)
    return [repo for repo in info.repos if repo.repo_type == "model" and repo.repo_id in wanted]


def evict_revisions(repo: str, revisions: Sequence[str]) -> list[str]:
    """Delete ``revisions`` (ref names such as ``step1000``, or commit hashes) of model ``repo`` from
    the hub cache; files another cached revision uses stay. Returns ``repo@revision`` of each deleted."""
    info = _scan_cache()
    if info is None:
        return []
    wanted = set(revisions)
    found = [
        (revision.commit_hash, sorted(revision.refs & wanted) or [revision.commit_hash])
        for cached in _model_repos(info, [repo])
        for revision in cached.revisions
        if revision.refs & wanted or revision.commit_hash in wanted
    ]
    if not found:
        return []
    info.delete_revisions(*(commit for commit, _ in found)).execute()
    return [f"{repo}@{name}" for _, names in found for name in names]


def enforce_budget(repos: Iterable[str], budget_bytes: int, protected: set[tuple[str, str]]) -> list[str]:
    """Delete the oldest cached revisions of ``repos`` (by their files' modification time) until the
    cache holds at most ``budget_bytes`` of those repos, never a ``(repo, revision)`` in ``protected``.
    Returns ``repo@revision`` of each deleted revision."""
    info = _scan_cache()
    if info is None:
        return []
    cached = _model_repos(info, repos)
    excess = sum(repo.size_on_disk for repo in cached) - budget_bytes
    if excess <= 0:
        return []
    candidates = sorted(
        (revision.last_modified, repo.repo_id, revision.commit_hash, revision)
        for repo in cached
        for revision in repo.revisions
        if not _is_protected(repo.repo_id, revision, protected)
    )
    chosen = []
    for _, repo_id, _, revision in candidates:
        chosen.append((repo_id, revision))
        if info.delete_revisions(*(r.commit_hash for _, r in chosen)).expected_freed_size >= excess:
            break
    if not chosen:
        return []
    info.delete_revisions(*(r.commit_hash for _, r in chosen)).execute()
    return [f"{repo_id}@{_name(revision)}" for repo_id, revision in chosen]


def _is_protected(repo: str, revision, protected: set[tuple[str, str]]) -> bool:
    names = set(revision.refs) | {revision.commit_hash}
    return any((repo, name) in protected for name in names)


def _name(revision) -> str:
    """A cached revision's ref names (``step1000``), else its commit hash."""
    return ",".join(sorted(revision.refs)) or revision.commit_hash
