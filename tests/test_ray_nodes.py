"""Extraction on a Ray cluster of two nodes (``ray.cluster_utils.Cluster`` on this machine): tasks run on
both, a node killed mid-run has its tasks run again on the other, and the driver commits every row once."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

import pytest

from layerlake import warehouse
from layerlake.etl import driver
from layerlake.etl.executors import make_lanes
from layerlake.etl.plan import make_plan
from layerlake.warehouse.audits import AUDITS, run_audit
from layerlake.warehouse.manifest import manifest_path, read_entries

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # about a minute: three Ray nodes start


@pytest.fixture
def two_nodes():
    """``(cluster, [node_a, node_b])``: a head that runs nothing (0 CPUs: it stays up when a worker
    node is killed) and two worker nodes of one CPU each, each with a resource of its own."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        nodes = [cluster.add_node(num_cpus=1, resources={name: 1}) for name in ("node_a", "node_b")]
        cluster.wait_for_nodes()
        yield cluster, nodes
    finally:
        cluster.shutdown()


def test_tasks_run_on_both_nodes_and_a_killed_node_s_tasks_finish_on_the_other(
    tiny_suite, tmp_path, two_nodes, monkeypatch
):
    cluster, nodes = two_nodes
    settings, _ = tiny_suite
    paths = dataclasses.replace(
        settings.paths, data=str(tmp_path), warehouse=str(tmp_path / "warehouse"), runs=str(tmp_path / "runs")
    )
    executor = dataclasses.replace(settings.executor, kind="ray", address=cluster.address, max_retries=2)
    settings = dataclasses.replace(settings, paths=paths, executor=executor)
    plan = make_plan(settings)  # 16 checkpoints: on 2 slots, 4 lanes of 4

    after_in_lane = {  # task id -> how many tasks its lane runs after it
        task.task_id: len(lane) - 1 - i
        for lane in make_lanes(plan.tasks, slots=2)
        for i, task in enumerate(lane)
    }
    placements: list[dict] = []  # where each committed task ran, in commit order
    killed: list[tuple[str, int, float]] = []  # (node id, tasks committed, Unix time) of the kill

    class KillANodeMidLane(driver.ExtractProgress):
        """The driver's own progress display, watching where each committed task ran: once both nodes
        have delivered a result, the node that delivers one with two or more tasks after it in its lane
        is killed (its worker is then computing the next, with one more to come)."""

        def advance(self, outcome):
            super().advance(outcome)
            if outcome.result is None:
                return  # a failure: the report says it
            placements.append(outcome.result.placement)
            node_id = outcome.result.placement["node_id"]
            both = {p["node_id"] for p in placements} == {node.node_id for node in nodes}
            if not killed and both and after_in_lane[outcome.task.task_id] >= 2:
                killed.append((node_id, len(placements), time.time()))
                cluster.remove_node(next(n for n in nodes if n.node_id == node_id), allow_graceful=False)

    monkeypatch.setattr(driver, "ExtractProgress", KillANodeMidLane)
    report = driver.run_extract(settings)

    assert report.ok, report.failed
    assert len(report.committed) == len(plan.tasks) == len(placements)
    ((victim, n_before, kill_time),) = killed
    assert n_before < len(plan.tasks) - 2  # killed mid-run
    nodes_seen = [p["node_id"] for p in placements]
    assert set(nodes_seen) == {node.node_id for node in nodes}
    finished_on_victim = [p["compute_span"][1] for p in placements if p["node_id"] == victim]
    assert max(finished_on_victim) <= kill_time  # (sent before the kill, some reach the driver after it)
    assert report.resubmitted >= 2  # the victim's unfinished tasks were handed to the survivor

    entries = read_entries(manifest_path(tmp_path / "warehouse"))
    ok = Counter(e.task_id for e in entries if e.status == "ok" and e.meta.get("kind") == "extract")
    assert ok == Counter(t.task_id for t in plan.tasks)  # each task committed once, by the driver
    placed = {e.task_id: e.meta["placement"]["node_id"] for e in entries if e.meta.get("kind") == "extract"}
    assert sorted(placed[t.task_id] for t in plan.tasks) == sorted(nodes_seen)

    con = warehouse.connect(tmp_path / "warehouse")
    assert run_audit(con, AUDITS.get("duplicate_keys")).num_rows == 0
    listed = Counter()  # rows per table as the manifest lists them
    for entry in entries:
        if entry.meta.get("kind") == "extract":
            for file in entry.files:
                listed[file.table] += file.rows
    assert {"checkpoints", "activation_stats", "sketches", "spectra"} <= set(listed)
    for table, rows in listed.items():
        per_checkpoint = con.sql(
            f"select model, step, count(*) as n from {table} group by all"  # table: the schema's own name
        ).fetchall()
        assert sum(n for *_, n in per_checkpoint) == rows
        assert len(per_checkpoint) == len(plan.tasks)  # every checkpoint has its rows ...
        by_model: dict[str, set[int]] = {}
        for model, _, n in per_checkpoint:
            by_model.setdefault(model, set()).add(n)
        assert all(len(counts) == 1 for counts in by_model.values()), (table, by_model)  # ... once
