"""What the outlier checks of scored spectra (``nirs.diagnostics``; the ``t2``, ``q``,
``t2_ratio``, ``q_ratio`` and ``flag`` columns of every outbox row) say about a scoring
run and about the weeks before it: flagged counts per file, the T² vs Q picture, the
share flagged per day (drift) and the alert when a file's flagged share passes its
dataset's threshold.

The outbox is the record: drift is read from the result files themselves
(``<root>/outbox/<dataset>/*.parquet``), so it needs no table of its own in the store,
and a result moved or deleted by the lab simply stops counting.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl

__all__ = ["DEFAULT_ALERT_SHARE", "ALERT_EVENT", "flagged_rows", "outlier_picture", "drift",
           "drift_picture", "over_threshold", "threshold_for", "emit_alert", "png_markdown"]

#: A file with more than this share of flagged spectra raises the alert, unless its
#: dataset has its own threshold (score_inbox's ``alert_thresholds``).
DEFAULT_ALERT_SHARE = 0.30
#: The Prefect event an automation can match (see README, "An alert on flagged spectra").
ALERT_EVENT = "nirsflow.scoring.flagged"
#: The run's picture shows at most this many points, one colour per file up to this many files.
MAX_PICTURE_POINTS = 20_000
MAX_PICTURE_FILES = 12


def flagged_rows(scored: list[dict]) -> list[dict]:
    """One row per scored file with outlier checks: spectra, flagged, share, per flag."""
    rows = []
    for item in scored:
        flags = item.get("flags")
        if flags is None:
            continue
        n = item["n_spectra"]
        rows.append({"file": item["file"], "spectra": n, "flagged": item["n_flagged"],
                     "share": round(item["n_flagged"] / n, 4) if n else 0.0,
                     **{f: flags.get(f, 0) for f in ("t2", "q", "both", "y_range")}})
    return rows


def outlier_picture(points: dict[str, dict], path: Path, title: str = "") -> Path:
    """T² vs Q of every file's (thinned) spectra, each to its 95 % limit, log scales;
    the limits are the lines at 1: a point right of or above them is flagged."""
    from nirs.plots import plt, save

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    total = sum(len(p["t2_ratio"]) for p in points.values())
    step = max(1, -(-total // MAX_PICTURE_POINTS))  # a run of many files: every step-th point of each
    series = points if len(points) <= MAX_PICTURE_FILES else {
        f"{len(points)} files": {k: [v for p in points.values() for v in p[k]] for k in ("t2_ratio", "q_ratio")}}
    for name, p in series.items():
        t2, q = np.asarray(p["t2_ratio"], float)[::step], np.asarray(p["q_ratio"], float)[::step]
        ax.scatter(np.maximum(t2, 1e-3), np.maximum(q, 1e-3), s=8, alpha=0.6, label=f"{name} ({len(t2)})")
    ax.axvline(1.0, color="k", lw=1, ls="--")
    ax.axhline(1.0, color="k", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    # 0.2, 0.5, 1, 2: plain numbers (not 2×10⁻¹), and only the 1-2-5 ones, which do not crowd
    plain = FuncFormatter(lambda v, _: f"{v:g}" if v > 0 and f"{v:.0e}"[0] in "125" else "")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
    ax.set_xlabel("Hotelling's T² / its 95 % limit")
    ax.set_ylabel("Q (SPE) / its 95 % limit")
    ax.set_title(title or "Outlier checks of the scored spectra")
    if points:
        ax.legend(fontsize=7, loc="best")
    return save(fig, path)


def _result_files(root: Path, dataset: str, since: datetime) -> list[Path]:
    folder = Path(root) / "outbox" / dataset
    if not folder.is_dir():
        return []
    cutoff = since.timestamp()
    return sorted(p for p in folder.glob("*.parquet") if p.stat().st_mtime >= cutoff)


def drift(root: Path, dataset: str, days: int = 28, now: datetime | None = None) -> pl.DataFrame:
    """Per chain and UTC day of the last `days`: spectra scored with checks, flagged, share
    (and per flag), from the result files in ``<root>/outbox/<dataset>/``."""
    now = now or datetime.now(timezone.utc)
    since = (now - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    files = _result_files(root, dataset, since)
    schema = {"chain_id": pl.String, "day": pl.Date, "spectra": pl.UInt32, "flagged": pl.UInt32,
              "share": pl.Float64, "t2": pl.UInt32, "q": pl.UInt32, "both": pl.UInt32, "y_range": pl.UInt32}
    if not files:
        return pl.DataFrame(schema=schema)
    rows = pl.concat([pl.scan_parquet(f).select(_drift_columns(f)) for f in files])
    out = (rows.filter(pl.col("flag").is_not_null() & (pl.col("scored_at") >= since))
           .with_columns(day=pl.col("scored_at").dt.convert_time_zone("UTC").dt.date())
           .group_by("chain_id", "day")
           .agg(spectra=pl.len(), flagged=(pl.col("flag") != "ok").sum(),
                **{f: (pl.col("flag") == f).sum() for f in ("t2", "q", "both", "y_range")})
           .with_columns(share=(pl.col("flagged") / pl.col("spectra")).round(4))
           .sort("day", "chain_id").collect())
    return out.select(list(schema)).cast(schema)


def _drift_columns(path: Path) -> list:
    """The columns drift reads; a result written before the checks existed has no
    ``flag`` column and counts as unchecked."""
    names = pl.read_parquet_schema(path)
    flag = pl.col("flag") if "flag" in names else pl.lit(None, pl.String).alias("flag")
    return [pl.col("chain_id"), pl.col("scored_at"), flag]


def drift_picture(table: pl.DataFrame, path: Path, dataset: str, threshold: float | None = None) -> Path:
    """Share flagged per day, one line per chain, with the alert threshold."""
    from nirs.plots import plt, save

    fig, ax = plt.subplots(figsize=(7, 4))
    for chain_id in table["chain_id"].unique(maintain_order=True).to_list():
        part = table.filter(pl.col("chain_id") == chain_id)
        ax.plot(part["day"].to_list(), (100 * part["share"]).to_list(), marker="o", label=f"chain {chain_id[:8]}")
    if threshold is not None:
        ax.axhline(100 * threshold, color="r", ls="--", lw=1, label=f"alert at {100 * threshold:g} %")
    ax.set_ylim(0, 100)
    ax.set_ylabel("spectra flagged (%)")
    ax.set_title(f"{dataset}: flagged by the outlier checks, per day")
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    return save(fig, path)


def png_markdown(path: Path, alt: str) -> str:
    """The PNG inline (a data URI, so the Prefect UI shows it without serving files)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"![{alt}](data:image/png;base64,{data})"


# -- the alert ---------------------------------------------------------------------------
def threshold_for(dataset: str | None, thresholds: dict | None, default: float = DEFAULT_ALERT_SHARE) -> float:
    value = (thresholds or {}).get(dataset, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"alert threshold for dataset {dataset!r} must be a share between 0 and 1, got {value!r}")
    return float(value)


def over_threshold(scored: list[dict], thresholds: dict | None) -> list[dict]:
    """The scored files whose flagged share passes their dataset's threshold."""
    alerts = []
    for item in scored:
        if item.get("flags") is None or not item["n_spectra"]:
            continue
        dataset = item["file"].split("/", 1)[0]
        limit = threshold_for(dataset, thresholds)
        share = item["n_flagged"] / item["n_spectra"]
        if share > limit:
            alerts.append({"file": item["file"], "dataset": dataset, "chain_id": item["chain_id"],
                           "spectra": item["n_spectra"], "flagged": item["n_flagged"], "share": round(share, 4),
                           "threshold": limit})
    return alerts


def emit_alert(alert: dict, flow_run_id: str | None):
    """One Prefect event per file over its threshold (``ALERT_EVENT``), about the dataset:
    an automation matching it can notify someone or pause the scoring deployment."""
    from prefect.events import emit_event

    resource = {"prefect.resource.id": f"nirsflow.dataset.{alert['dataset']}",
                "prefect.resource.name": alert["dataset"], "nirsflow.file": alert["file"],
                "nirsflow.chain-id": alert["chain_id"]}
    related = ([{"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"}]
               if flow_run_id else [])
    return emit_event(event=ALERT_EVENT, resource=resource, related=related, payload=alert)
