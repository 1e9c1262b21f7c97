"""The figures of a regression chain, from the store: predicted vs observed and residuals
from its stored "avg" predictions (cross-validation and test), and its spectra before and
after its spectral preprocessing, from a spectra file or, without one, from the data it
was trained on (a built-in set, or its training file while that is still where it was).

Analyte and unit: given, else the run's target column (a built-in set knows its own)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("nirsflow.plots")


def _dataset_spec(store, chain: dict) -> tuple[dict, dict]:
    pipeline = store.get_pipeline(chain["pipeline_id"])
    run = store.get_run(pipeline["run_id"])
    spec = next((d for d in run.get("datasets") or [] if d.get("name") == pipeline["dataset_name"]),
                {"name": pipeline["dataset_name"]})
    return pipeline, spec


def analyte_of(spec: dict, analyte: str | None, unit: str | None) -> tuple[str, str | None]:
    from nirs.specs import BUILTIN_ANALYTES

    path = str(spec.get("path") or "")
    builtin = BUILTIN_ANALYTES.get(path.removeprefix("builtin:")) if path.startswith("builtin:") else None
    name = analyte or (builtin[0] if builtin else spec.get("target_column")) or "value"
    return name, unit if unit is not None else (builtin[1] if builtin and not analyte else None)


def training_spectra(spec: dict):
    """The chain's training spectra, or None when they cannot be read any more."""
    from nirs.specs import load_spec

    path = str(spec.get("path") or "")
    try:
        if path.startswith("builtin:"):
            return load_spec(path.removeprefix("builtin:"))[0]
        if path and spec.get("target_column"):
            return load_spec({"name": spec["name"], "train": path, "target_column": spec["target_column"]})[0]
    except Exception as exc:  # noqa: BLE001 - the spectra plot is skipped, and says why
        log.warning("the training spectra of %s cannot be read (%s); give --data to plot spectra", spec["name"], exc)
    return None


def chain_figures(store, chain_id: str, data=None, *, analyte: str | None = None, unit: str | None = None,
                  spectra: bool = True) -> dict:
    """{file stem: matplotlib figure}; empty for a classification chain or one with no
    stored "avg" predictions."""
    from nirs import plots
    from tasks.leaderboard import all_params, pipeline_label

    chain = store.get_chain(chain_id)
    if chain["task_type"] == "classification":
        return {}
    sets = {}
    for partition, label in (("val", "cross-validation"), ("test", "test")):
        rows = store.query_predictions(chain_id=chain_id, fold_id="avg", partition=partition)
        if rows.height:
            arrays = store.get_prediction_arrays(rows["prediction_id"][0])
            sets[label] = (arrays["y_true"], arrays["y_pred"])
    if not sets:
        return {}
    pipeline, spec = _dataset_spec(store, chain)
    name, unit = analyte_of(spec, analyte, unit)
    params = ", ".join(f"{k}={v}" for k, v in all_params(pipeline["expanded_config"]).items())
    title = (f"{spec['name']} · {name} · chain {chain_id[:8]}\n{pipeline_label(pipeline['expanded_config'])}"
             + (f" ({params})" if params else ""))
    figures = {"predicted_vs_observed": plots.predicted_vs_observed_figure(sets, analyte=name, unit=unit, title=title),
               "residuals": plots.residuals_figure(sets, analyte=name, unit=unit, title=title)}
    if spectra:
        data = data if data is not None else training_spectra(spec)
        if data is not None:
            after, grid = store.preprocess_chain(chain_id, data.X, data.wavelengths, spectral_only=True)
            figures["spectra"] = plots.spectra_figure(
                data.wavelengths, data.X, after, grid, steps=store.spectral_steps_of_chain(chain_id),
                title=f"{getattr(data, 'name', None) or spec['name']} spectra · chain {chain_id[:8]}")
    return figures


def plot_chain(store, chain_id: str, folder: Path, data=None, *, analyte: str | None = None,
               unit: str | None = None) -> list[Path]:
    """The PNGs of ``chain_figures`` in ``folder``."""
    from nirs import plots

    return [plots.save(fig, Path(folder) / f"{stem}.png")
            for stem, fig in chain_figures(store, chain_id, data, analyte=analyte, unit=unit).items()]
