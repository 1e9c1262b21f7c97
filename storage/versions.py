"""Which library versions fitted a chain, and whether this environment matches them.

A lab keeps models for years and upgrades its Python packages in between. A pickled
scikit-learn model is only promised to load and predict the same under the version
that fitted it; across a minor release it may warn, fail, or quietly predict otherwise.
So every chain records, when it is saved, the versions of the process that saved it
(the process that ran the fits, or one with the same environment), in its metadata under
``FITTED_VERSIONS``. Replaying a chain whose scikit-learn major.minor differs from the
running one warns, naming both; a bundle carries the versions of the fit, not of the
export, and its reader checks those.
"""

from __future__ import annotations

import functools
import platform
import re
import warnings
from importlib import metadata

from .errors import ArtifactLoadError, ChainVersionWarning

FITTED_VERSIONS = "fitted_versions"  # the key in a chain's metadata


def package_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """This environment's versions of what a fitted chain depends on (a fresh dict)."""
    return dict(_library_versions())


@functools.lru_cache(maxsize=1)
def _library_versions() -> dict[str, str | None]:
    # Read once per process (each lookup scans the installed distributions): an upgrade
    # does not change the modules a running process has imported.
    return {"python": platform.python_version(), "numpy": package_version("numpy"),
            "scikit-learn": package_version("scikit-learn"), "joblib": package_version("joblib"),
            "nirsflow": package_version("nirsflow")}


def major_minor(version: str) -> tuple[int, int] | None:
    found = re.match(r"^\s*(\d+)\.(\d+)", str(version))
    return (int(found.group(1)), int(found.group(2))) if found else None


def recorded_versions(chain: dict) -> dict | None:
    """The versions a chain recorded when it was saved; None for a chain saved before
    nirsflow recorded them."""
    metadata = chain.get("metadata")
    recorded = metadata.get(FITTED_VERSIONS) if isinstance(metadata, dict) else None
    return recorded if isinstance(recorded, dict) else None


def sklearn_mismatch(fitted: object) -> tuple[str, str] | None:
    """``(fitted, here)`` scikit-learn versions when a chain's recorded versions name one
    whose major.minor differs from this environment's; None when they agree or either is
    unknown (a chain saved before versions were recorded)."""
    fitted_version = fitted.get("scikit-learn") if isinstance(fitted, dict) else None
    here = _library_versions()["scikit-learn"]
    if not isinstance(fitted_version, str) or here is None or major_minor(fitted_version) == major_minor(here):
        return None
    return fitted_version, here


def version_mismatch(chain: dict) -> str | None:
    """What to tell the user when another scikit-learn (major.minor) fitted the chain."""
    mismatch = sklearn_mismatch(recorded_versions(chain))
    if mismatch is None:
        return None
    return (f"chain {chain.get('chain_id')} was fitted with scikit-learn {mismatch[0]}, this environment has "
            f"scikit-learn {mismatch[1]}: its models may load or predict differently; compare a replay "
            "against its stored predictions, or refit it")


def warn_on_version_mismatch(chain: dict) -> None:
    """Warn once for a chain about to be replayed under another scikit-learn."""
    message = version_mismatch(chain)
    if message is not None:
        # the caller of the store's replay_chain: this, Chains._replayable, Chains.replay_chain,
        # the store's public method
        warnings.warn(message, ChainVersionWarning, stacklevel=5)


def unloadable_in_chain(exc: ArtifactLoadError, chain: dict, context: str = "") -> ArtifactLoadError:
    """`exc` (an artifact of `chain` that cannot be loaded here) said again with what
    fitted the chain: the scikit-learn it recorded, against this environment's. Raise it
    ``from exc.__cause__``."""
    fitted = (recorded_versions(chain) or {}).get("scikit-learn")
    note = (f"; the chain was fitted with scikit-learn {fitted}, this environment has "
            f"scikit-learn {_library_versions()['scikit-learn']}") if isinstance(fitted, str) else ""
    return ArtifactLoadError(f"{context}{exc}{note}")
