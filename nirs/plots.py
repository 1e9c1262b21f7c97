"""Pictures a chemometrician reads faster than tables: predicted vs observed with the 1:1
line and RMSE/R², residuals, and spectra before and after preprocessing. PNG files,
drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


save_figure = _save  # for the pictures drawn elsewhere (tasks.outliers)


def _rmse_r2(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    resid = y_pred - y_true
    rmse = float(np.sqrt(np.mean(resid ** 2)))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    return rmse, (1.0 - float(np.sum(resid ** 2)) / ss_tot) if ss_tot > 0 else float("nan")


def predicted_vs_observed(sets: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str = "") -> Path:
    """`sets`: {label: (y_true, y_pred)}, e.g. {"CV (val)": ..., "test": ...}."""
    fig, ax = plt.subplots(figsize=(6, 6))
    lows, highs = [], []
    for (label, (y_true, y_pred)), marker in zip(sets.items(), "os^D"):
        y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
        rmse, r2 = _rmse_r2(y_true, y_pred)
        ax.scatter(y_true, y_pred, s=14, alpha=0.7, marker=marker, label=f"{label}: RMSE {rmse:.3f}, R² {r2:.3f}")
        lows.append(min(y_true.min(), y_pred.min())), highs.append(max(y_true.max(), y_pred.max()))
    lo, hi = min(lows), max(highs)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="1:1")
    ax.set_xlabel("observed"), ax.set_ylabel("predicted"), ax.set_title(title or "Predicted vs observed")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def residuals(sets: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for (label, (y_true, y_pred)), marker in zip(sets.items(), "os^D"):
        y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
        ax.scatter(y_pred, y_pred - y_true, s=14, alpha=0.7, marker=marker, label=label)
    ax.axhline(0, color="k", lw=1)
    ax.set_xlabel("predicted"), ax.set_ylabel("residual (predicted - observed)")
    ax.set_title(title or "Residuals"), ax.legend(fontsize=8)
    return _save(fig, path)


def spectra(wavelengths, before: np.ndarray, after: np.ndarray, after_wavelengths, path: Path,
            title: str = "", max_lines: int = 60) -> Path:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6))
    rows = np.linspace(0, len(before) - 1, min(max_lines, len(before))).astype(int)
    x_before = wavelengths if wavelengths is not None else np.arange(before.shape[1])
    x_after = after_wavelengths if after_wavelengths is not None else np.arange(after.shape[1])
    top.plot(x_before, before[rows].T, lw=0.6)
    bottom.plot(x_after, after[rows].T, lw=0.6)
    top.set_title(title or "Spectra"), top.set_ylabel("raw")
    bottom.set_ylabel("after preprocessing")
    bottom.set_xlabel("wavelength (nm)" if after_wavelengths is not None else "feature")
    return _save(fig, path)
