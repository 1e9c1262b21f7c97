"""nirsflow's workspace: a DuckDB store plus content-addressed artifacts.

Never imports Prefect, so a notebook or a script can use a workspace on its own::

    from storage import WorkspaceStore
    with WorkspaceStore("./workspace") as store:
        print(store.top_predictions(5))

The names below are the whole public surface: ``tasks`` and ``flows`` import nothing else
of ``storage`` (tests/test_boundaries.py).
"""

from .errors import (ArtifactIntegrityError, ArtifactLoadError, InvalidInputError, LockTimeoutError, NotFoundError,
                     ReplayError, SchemaVersionError, StoreError, WorkspaceCorruptError, WorkspaceError)
from .errors import (BundleError, BundleIntegrityError, BundleTrustError, BundleVersionError,
                     BundleVersionWarning, ChainVersionWarning)
from .atomic import atomic_path, fsync_folder, write_bytes
from .bundles import Bundle, load_bundle
from .chain_builder import ArtifactRegistry, ChainBuilder, best_scores, record_trace, save_trace_predictions
from .imports import ImportReport
from .library import PipelineLibrary
from .locking import FileLock, MemoryLock, WorkspaceLock
from .maintenance import GcResult, VacuumResult, plan_gc
from .processes import process_identity, process_is_gone
from .references import AmbiguousIdError, resolve_id, short_id
from .replay import ReplayableChain
from .versions import version_mismatch
from .workspace import WorkspaceStore

__all__ = [
    "WorkspaceStore", "ChainBuilder", "ArtifactRegistry", "record_trace", "save_trace_predictions", "best_scores",
    "PipelineLibrary", "ImportReport", "GcResult", "VacuumResult", "plan_gc", "ReplayableChain", "version_mismatch",
    "FileLock", "MemoryLock", "WorkspaceLock", "process_identity", "process_is_gone",
    "resolve_id", "short_id", "AmbiguousIdError",
    "atomic_path", "write_bytes", "fsync_folder",
    "StoreError", "InvalidInputError", "NotFoundError", "WorkspaceError", "WorkspaceCorruptError",
    "SchemaVersionError", "LockTimeoutError", "ArtifactIntegrityError", "ArtifactLoadError", "ReplayError",
    "load_bundle", "Bundle", "BundleError", "BundleIntegrityError", "BundleTrustError",
    "BundleVersionError", "BundleVersionWarning", "ChainVersionWarning",
]
