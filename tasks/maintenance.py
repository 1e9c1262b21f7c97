"""Keeping a workspace (and Prefect's own database) healthy for months: artifact gc,
vacuum, reconciliation of store runs with Prefect's final states, flow-run retention.

``reconcile_runs`` settles every store run still ``running``:

* Prefect says Completed: if the run's ``planned`` log says N pipelines and all N are in
  the store in a final state, only ``complete_run`` was lost (a hook's write failed), so
  it is repaired (``complete_run`` with ``reconciled: true``); otherwise ``fail_run``
  names what is missing. Never ``completed`` with writes missing.
* Prefect says Failed / Crashed / Cancelled: the store follows, with Prefect's message.
* Prefect still says Running/Pending, but the process recorded at ``begin_run`` is gone
  (same host, pid dead or reused: ``kill -9``, OOM): the flow run is set Crashed in
  Prefect and the store run ``crashed``. A run whose process lives elsewhere is left
  alone until Prefect itself gives up on it.
* Prefect no longer knows the flow run (a pruned or another server's database): after
  ``stale_after`` seconds the run is marked ``crashed`` with that reason.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from storage import WorkspaceStore, process_is_gone


def _store(workspace: str, lock_timeout: float) -> WorkspaceStore:
    path = Path(workspace)
    if not (path / "store.duckdb").exists():
        raise FileNotFoundError(f"no workspace at {path} (no store.duckdb): check the deployment's workspace path")
    return WorkspaceStore(path, lock_timeout=lock_timeout)


@task(name="gc-artifacts", task_run_name="gc artifacts · {workspace}", cache_policy=NO_CACHE, persist_result=False)
def gc_artifacts(workspace: str, grace: float, dry_run: bool = False, lock_timeout: float = 120.0) -> dict:
    with _store(workspace, lock_timeout) as store:
        result = store.gc_artifacts(grace=grace, dry_run=dry_run)
    out = {"removed": int(result), "artifacts": len(result.artifact_ids), "orphan_files": len(result.orphan_files),
           "bytes_freed": int(result.bytes_freed), "dry_run": bool(result.dry_run), "grace_s": grace}
    get_run_logger().info("gc %s: %s%d dead artifacts and %d orphan files, %.1f MB freed (grace %.0f s)",
                          workspace, "would remove " if dry_run else "removed ", out["artifacts"],
                          out["orphan_files"], out["bytes_freed"] / 1e6, grace)
    return out


@task(name="vacuum", task_run_name="vacuum · {workspace}", cache_policy=NO_CACHE, persist_result=False)
def vacuum_store(workspace: str, lock_timeout: float = 300.0) -> dict:
    with _store(workspace, lock_timeout) as store:
        result = store.vacuum()
    out = {"bytes_before": result.bytes_before, "bytes_after": result.bytes_after,
           "removed_temporaries": [str(p) for p in result.removed_temporaries]}
    get_run_logger().info("vacuum %s: %.2f MB -> %.2f MB", workspace, result.bytes_before / 1e6,
                          result.bytes_after / 1e6)
    return out


def _log_details(store: WorkspaceStore, run_id: str, event: str) -> dict | None:
    frame = store.sql("SELECT details FROM logs WHERE run_id = ? AND event = ? ORDER BY created_at DESC LIMIT 1",
                      [run_id, event])
    if frame.is_empty() or frame["details"][0] is None:
        return None
    return json.loads(frame["details"][0])


def _age_seconds(created_at) -> float:
    if created_at is None:
        return float("inf")
    return (datetime.now(timezone.utc).replace(tzinfo=None) - created_at).total_seconds()


def reconcile_runs(store: WorkspaceStore, client, *, stale_after: float = 900.0) -> list[dict]:
    """Settle the store's ``running`` runs against Prefect (see the module docstring).
    ``client`` is a synchronous Prefect client. Returns one action per run looked at."""
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    actions = []
    running = store.list_runs(status="running", limit=100_000)
    for row in running.iter_rows(named=True):
        run_id, flow_run_id = row["run_id"], row["flow_run_id"]
        if not flow_run_id:
            actions.append({"run_id": run_id, "action": "skipped", "reason": "not a Prefect run"})
            continue
        try:
            flow_run = client.read_flow_run(UUID(flow_run_id))
        except ObjectNotFound:
            if _age_seconds(row["created_at"]) < stale_after:
                actions.append({"run_id": run_id, "action": "waiting", "reason": "flow run not found yet"})
                continue
            reason = f"reconcile: Prefect has no flow run {flow_run_id} (pruned, or another server)"
            store.fail_run(run_id, reason, status="crashed")
            actions.append({"run_id": run_id, "action": "crashed", "reason": reason})
            continue
        state = flow_run.state
        message = (state.message or state.name) if state else "no state"
        if state is None or not state.is_final():
            gone = process_is_gone(_log_details(store, run_id, "process") or {})
            if gone:
                ident = _log_details(store, run_id, "process")
                reason = (f"reconcile: process {ident.get('pid')} on {ident.get('host')} is gone while Prefect "
                          f"still said {state.name if state else 'nothing'} (killed, e.g. SIGKILL or out of memory)")
                client.set_flow_run_state(flow_run.id, Crashed(message=reason), force=True)
                store.fail_run(run_id, reason, status="crashed")
                actions.append({"run_id": run_id, "action": "crashed", "reason": reason})
            else:
                actions.append({"run_id": run_id, "action": "left running",
                                "reason": f"Prefect says {state.name if state else 'nothing'}"
                                          + ("" if gone is False else "; its process is on another host")})
            continue
        if state.is_completed():
            actions.append(_settle_completed(store, run_id))
        else:
            status = "crashed" if state.is_crashed() else "cancelled" if state.is_cancelled() else "failed"
            reason = f"reconcile: Prefect says {state.name}: {message}"
            store.fail_run(run_id, reason, status=status)
            actions.append({"run_id": run_id, "action": status, "reason": reason})
    return actions


def _settle_completed(store: WorkspaceStore, run_id: str) -> dict:
    planned = (_log_details(store, run_id, "planned") or {}).get("pipelines")
    pipelines = store.list_pipelines(run_id=run_id)
    final = pipelines.filter(pipelines["status"].is_in(["completed", "failed"])).height
    if planned is not None and pipelines.height == planned and final == planned:
        completed = pipelines.filter(pipelines["status"] == "completed").height
        store.complete_run(run_id, summary={"reconciled": True, "counts": {
            "planned": planned, "completed": completed, "failed": planned - completed, "landed": planned}})
        return {"run_id": run_id, "action": "completed",
                "reason": f"Prefect says Completed and all {planned} planned pipelines are in the store"}
    reason = (f"reconcile: Prefect says Completed, but the store holds {final} finished of "
              f"{'an unknown number of' if planned is None else planned} planned pipelines "
              f"({pipelines.height - final} unfinished): a hook's store write was lost")
    store.fail_run(run_id, reason, status="failed")
    return {"run_id": run_id, "action": "failed", "reason": reason}


@task(name="reconcile-runs", task_run_name="reconcile runs · {workspace}", cache_policy=NO_CACHE,
      persist_result=False)
def reconcile_workspace(workspace: str, stale_after: float = 900.0, lock_timeout: float = 120.0) -> list[dict]:
    from prefect.client.orchestration import get_client

    logger = get_run_logger()
    with _store(workspace, lock_timeout) as store, get_client(sync_client=True) as client:
        actions = reconcile_runs(store, client, stale_after=stale_after)
    for action in actions:
        if action["action"] not in ("skipped", "left running", "waiting"):
            logger.warning("run %s -> %s: %s", action["run_id"], action["action"], action["reason"])
    logger.info("reconcile %s: %d running runs looked at, %d settled", workspace, len(actions),
                sum(a["action"] in ("completed", "failed", "crashed", "cancelled") for a in actions))
    return actions


@task(name="prune-prefect-runs", task_run_name="prune Prefect flow runs older than {retention_days} days",
      cache_policy=NO_CACHE, persist_result=False)
def prune_prefect_runs(retention_days: float, limit: int = 500) -> int:
    """Delete finished Prefect flow runs (their task runs go with them) that ended more
    than ``retention_days`` ago, at most ``limit`` per call: Prefect's own database grows
    by ~26 KB per task run, so a lab's server left running for months needs a bound."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterEndTime, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.context import FlowRunContext

    cutoff = datetime.now(timezone.utc) - timedelta(days=retention_days)
    final = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]
    ctx = FlowRunContext.get()
    me = ctx.flow_run.id if ctx and ctx.flow_run else None
    deleted = 0
    flow_run_filter = FlowRunFilter(end_time=FlowRunFilterEndTime(before_=cutoff),
                                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=final)))
    with get_client(sync_client=True) as client:
        while deleted < limit:
            page = client.read_flow_runs(flow_run_filter=flow_run_filter, sort=FlowRunSort.END_TIME_DESC,
                                         limit=min(200, limit - deleted + 1))
            page = [r for r in page if r.id != me]  # the API pages at most 200 at a time
            if not page:
                break
            for flow_run in page[: limit - deleted]:
                client.delete_flow_run(flow_run.id)
                deleted += 1
    get_run_logger().info("pruned %d Prefect flow runs that ended before %s", deleted, cutoff.isoformat())
    return deleted
