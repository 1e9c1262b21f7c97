"""The errors a user of the store can catch.

Each carries one message that names what is wrong (the workspace, the id, the file,
expected vs found), so a caller never has to dig through a DuckDB traceback.
"""

from __future__ import annotations

from nirs import replay as replay_rule


class StoreError(Exception):
    """Base class of every error the workspace store raises on purpose."""


class InvalidInputError(StoreError, ValueError):
    """An argument has the wrong type, shape or value; nothing was written."""


class NotFoundError(StoreError, KeyError):
    """An id (run, pipeline, chain, prediction, artifact) is not in the workspace."""

    def __init__(self, kind: str, key: str, workspace: object = None) -> None:
        where = f" in workspace {workspace}" if workspace is not None else ""
        self.kind, self.key = kind, key
        super().__init__(f"unknown {kind} id {key!r}{where}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class WorkspaceError(StoreError):
    """The workspace itself cannot be used (a file where a folder should be, ...)."""


class WorkspaceCorruptError(WorkspaceError):
    """``store.duckdb`` exists but is not a readable DuckDB database."""


class SchemaVersionError(WorkspaceError):
    """The workspace was written by a newer nirsflow; it is left untouched."""


class LockTimeoutError(StoreError, TimeoutError):
    """Waiting for the workspace lock took longer than the configured timeout; the message
    names the workspace and who holds it."""


class ArtifactIntegrityError(StoreError):
    """An artifact file is missing, or its bytes no longer hash to its id."""


class ArtifactLoadError(StoreError):
    """An artifact's bytes are sound (they hash to its id) but cannot become an object
    here: a class or module its pickle names is missing or changed (e.g. after an upgrade)."""


class ReplayError(StoreError, replay_rule.ReplayError):
    """New data cannot be replayed through a chain (feature count, wavelength grid); the
    replay rule's own error (``nirs.replay.ReplayError``, a ValueError), said by the store.
    ``problem``, ``expected`` and ``found`` say it as data."""


class BundleError(StoreError):
    """A ``.n4a`` bundle is not one nirsflow can read: not a ZIP, no manifest, an unsafe,
    duplicate or unlisted member, a newer format version, a malformed chain."""


class BundleIntegrityError(BundleError):
    """A bundle member's bytes do not hash to what its manifest says, or its manifest was
    changed after it was signed. ``trusted=True`` never waives this."""


class BundleTrustError(BundleError):
    """A bundle is unsigned, signed with a key not at hand, or no key is at hand to check
    it; load it with ``trusted=True`` only if you trust where it came from."""


class BundleVersionError(BundleError):
    """Strict mode: the bundle was fitted with another scikit-learn major.minor version."""


class BundleVersionWarning(UserWarning):
    """The bundle was fitted with another scikit-learn major.minor version."""


class ChainVersionWarning(UserWarning):
    """A chain is replayed under another scikit-learn (major.minor) than the one that fitted it."""
