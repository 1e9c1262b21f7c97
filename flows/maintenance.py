"""Scheduled upkeep of a workspace: ``gc`` (nightly), ``vacuum`` (weekly), ``reconcile``
(hourly, and on demand). Each reports what it did as a markdown artifact and in its logs.

These flows write the store directly (they are not training runs, so there is no run row
to mirror); they take the workspace lock like any other process, so they are safe beside
training runs: gc never removes an artifact a chain references or one younger than the
grace period, and vacuum swaps the database file under the exclusive lock.
"""

from __future__ import annotations

from prefect import flow

from tasks.maintenance import gc_artifacts, prune_prefect_runs, reconcile_workspace, vacuum_store
from tasks.reporting import artifact_key, publish_markdown

DAY = 86_400.0


@flow(name="gc", flow_run_name="gc · {workspace}", persist_result=False)
def gc(workspace: str, grace: float = DAY, dry_run: bool = False, lock_timeout: float = 120.0) -> dict:
    """Remove artifacts no chain references (and orphan files) older than ``grace`` seconds."""
    result = gc_artifacts(workspace, grace=grace, dry_run=dry_run, lock_timeout=lock_timeout)
    publish_markdown(
        f"# Artifact gc\n\n- workspace `{workspace}`\n- grace period {grace:.0f} s\n"
        f"- {'would remove' if dry_run else 'removed'} **{result['artifacts']}** dead artifacts and "
        f"**{result['orphan_files']}** orphan files, {result['bytes_freed'] / 1e6:.2f} MB",
        key=artifact_key("gc", "report"), description=f"gc of {workspace}")
    return result


@flow(name="vacuum", flow_run_name="vacuum · {workspace}", persist_result=False)
def vacuum(workspace: str, lock_timeout: float = 300.0) -> dict:
    """Compact ``store.duckdb`` into a new file and swap it in (gives disk space back)."""
    result = vacuum_store(workspace, lock_timeout=lock_timeout)
    publish_markdown(
        f"# Vacuum\n\n- workspace `{workspace}`\n- {result['bytes_before'] / 1e6:.2f} MB → "
        f"**{result['bytes_after'] / 1e6:.2f} MB**", key=artifact_key("vacuum", "report"),
        description=f"vacuum of {workspace}")
    return result


@flow(name="reconcile", flow_run_name="reconcile · {workspace}", persist_result=False)
def reconcile(workspace: str, stale_after: float = 900.0, prefect_retention_days: float | None = 30.0,
              prune_limit: int = 500, lock_timeout: float = 120.0) -> dict:
    """Settle store runs a hook could not close (see ``tasks.maintenance``), then delete
    Prefect flow runs that ended more than ``prefect_retention_days`` ago (None: keep all)."""
    actions = reconcile_workspace(workspace, stale_after=stale_after, lock_timeout=lock_timeout)
    pruned = None
    if prefect_retention_days is not None:
        pruned = prune_prefect_runs(prefect_retention_days, limit=prune_limit)
    settled = [a for a in actions if a["action"] in ("completed", "failed", "crashed", "cancelled")]
    lines = [f"# Reconcile\n\n- workspace `{workspace}`\n- {len(actions)} runs were `running` in the store; "
             f"**{len(settled)}** settled\n"
             + (f"- {pruned} Prefect flow runs older than {prefect_retention_days} days deleted\n"
                if pruned is not None else "")]
    if actions:
        lines += ["| run | action | reason |", "|---|---|---|"]
        lines += [f"| `{a['run_id']}` | {a['action']} | {a['reason']} |" for a in actions[:200]]
    publish_markdown("\n".join(lines), key=artifact_key("reconcile", "report"),
                     description=f"reconcile of {workspace}")
    return {"actions": actions, "pruned": pruned}
