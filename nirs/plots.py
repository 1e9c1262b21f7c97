"""Pictures a chemometrician reads faster than tables, drawn as one would publish them:
predicted vs observed (analyte and unit on both axes, the 1:1 line, RMSECV and RMSEP with
bias, slope, R² and n for each set, the chain and its parameters in the title),
residuals, and spectra before and after the spectral preprocessing. PNG files, drawn with
matplotlib's Agg backend (no display needed).

Each ``*_figure`` function returns the matplotlib figure (tests read its title and labels
back); ``save`` writes and closes it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nirs.metrics import regression_summary, score_name  # noqa: E402

#: the partition of each set's label, for its score's name (RMSECV, RMSEP)
_PARTITIONS = {"cross-validation": "val", "test": "test", "calibration": "train"}


def save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def axis_label(what: str, analyte: str, unit: str | None) -> str:
    """``Observed active ingredient (mg)``."""
    return f"{what} {analyte}" + (f" ({unit})" if unit else "")


def _num(value) -> str:
    return "—" if value is None else f"{value:.3g}" if abs(value) >= 100 else f"{value:.3f}"


def set_label(label: str, y_true, y_pred) -> str:
    """``RMSEP 2.304, bias 0.072, slope 0.987, R² 0.983, n 212`` for one set of points."""
    s = regression_summary(y_true, y_pred)
    name = score_name("rmse", _PARTITIONS.get(label, label))
    return (f"{label}: {name} {_num(s['rmse'])}, bias {_num(s['bias'])}, slope {_num(s['slope'])}, "
            f"R² {_num(s['r2'])}, n {s['n']}")


def predicted_vs_observed_figure(sets: dict[str, tuple[np.ndarray, np.ndarray]], *, analyte: str = "value",
                                 unit: str | None = None, title: str = ""):
    """``sets``: {label: (y_true, y_pred)}, labels "cross-validation" and "test"."""
    fig, ax = plt.subplots(figsize=(7, 7))
    lows, highs = [], []
    for (label, (y_true, y_pred)), marker in zip(sets.items(), "os^D"):
        y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
        ax.scatter(y_true, y_pred, s=14, alpha=0.7, marker=marker, label=set_label(label, y_true, y_pred))
        lows.append(min(y_true.min(), y_pred.min())), highs.append(max(y_true.max(), y_pred.max()))
    lo, hi = min(lows), max(highs)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="1:1")
    ax.set_xlabel(axis_label("Observed", analyte, unit))
    ax.set_ylabel(axis_label("Predicted", analyte, unit))
    ax.set_title(title or f"Predicted vs observed {analyte}", fontsize=10)
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="upper left", fontsize=7.5)
    return fig


def residuals_figure(sets: dict[str, tuple[np.ndarray, np.ndarray]], *, analyte: str = "value",
                     unit: str | None = None, title: str = ""):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (label, (y_true, y_pred)), marker in zip(sets.items(), "os^D"):
        y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
        ax.scatter(y_pred, y_pred - y_true, s=14, alpha=0.7, marker=marker, label=set_label(label, y_true, y_pred))
    ax.axhline(0, color="k", lw=1)
    ax.set_xlabel(axis_label("Predicted", analyte, unit))
    ax.set_ylabel(axis_label("Residual (predicted − observed)", "", unit).replace("  ", " "))
    ax.set_title(title or f"Residuals of {analyte}", fontsize=10)
    ax.legend(fontsize=7.5)
    return fig


def spectra_figure(wavelengths, before: np.ndarray, after: np.ndarray, after_wavelengths, *, steps: list[str],
                   title: str = "", y_label: str = "Absorbance (AU)", max_lines: int = 60):
    """Raw spectra above, the same spectra after ``steps`` (the spectral preprocessing)
    below; every axis labelled."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5))
    rows = np.linspace(0, len(before) - 1, min(max_lines, len(before))).astype(int)
    x_before = wavelengths if wavelengths is not None else np.arange(before.shape[1])
    x_after = after_wavelengths if after_wavelengths is not None else np.arange(after.shape[1])
    top.plot(x_before, before[rows].T, lw=0.6)
    bottom.plot(x_after, after[rows].T, lw=0.6)
    done = " + ".join(steps) if steps else "no spectral preprocessing"
    top.set_title(title or "Spectra", fontsize=10)
    top.set_ylabel(f"Raw {y_label[0].lower()}{y_label[1:]}")
    top.set_xlabel("Wavelength (nm)" if wavelengths is not None else "Variable")
    bottom.set_title(f"After {done} ({len(rows)} of {len(before)} spectra)", fontsize=9)
    bottom.set_ylabel(f"{y_label.split(' (')[0]} after {done}" if steps else y_label)
    bottom.set_xlabel("Wavelength (nm)" if after_wavelengths is not None else "Variable")
    return fig


# -- files, as before: one call, one PNG ------------------------------------------------------
def predicted_vs_observed(sets, path: Path, title: str = "", **labels) -> Path:
    return save(predicted_vs_observed_figure(sets, title=title, **labels), path)


def residuals(sets, path: Path, title: str = "", **labels) -> Path:
    return save(residuals_figure(sets, title=title, **labels), path)


def spectra(wavelengths, before, after, after_wavelengths, path: Path, title: str = "", steps=(), **kw) -> Path:
    return save(spectra_figure(wavelengths, before, after, after_wavelengths, steps=list(steps), title=title, **kw),
                path)
