"""nirsflow's workspace: a DuckDB store plus content-addressed artifacts.

Never imports Prefect, so a notebook or a script can use a workspace on its own::

    from storage import WorkspaceStore
    with WorkspaceStore("./workspace") as store:
        print(store.top_predictions(5))
"""

from .errors import (ArtifactIntegrityError, ArtifactLoadError, InvalidInputError, LockTimeoutError, NotFoundError,
                     ReplayError, SchemaVersionError, StoreError, WorkspaceCorruptError, WorkspaceError)
from .errors import (BundleError, BundleIntegrityError, BundleTrustError, BundleVersionError,
                     BundleVersionWarning, ChainVersionWarning)
from .bundles import Bundle, load_bundle
from .chain_builder import ArtifactRegistry, ChainBuilder, record_trace
from .library import PipelineLibrary
from .locking import FileLock, MemoryLock, WorkspaceLock
from .maintenance import GcResult, VacuumResult, plan_gc
from .processes import process_identity, process_is_gone
from .replay import ReplayableChain
from .workspace import WorkspaceStore

__all__ = [
    "WorkspaceStore", "ChainBuilder", "ArtifactRegistry", "record_trace", "PipelineLibrary",
    "GcResult", "VacuumResult", "plan_gc", "ReplayableChain",
    "FileLock", "MemoryLock", "WorkspaceLock", "process_identity", "process_is_gone",
    "StoreError", "InvalidInputError", "NotFoundError", "WorkspaceError", "WorkspaceCorruptError",
    "SchemaVersionError", "LockTimeoutError", "ArtifactIntegrityError", "ArtifactLoadError", "ReplayError",
    "load_bundle", "Bundle", "BundleError", "BundleIntegrityError", "BundleTrustError",
    "BundleVersionError", "BundleVersionWarning", "ChainVersionWarning",
]
