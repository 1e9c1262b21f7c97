"""Portable chain bundles (``.n4a``): the format, its signature, its checks, and loading.

A bundle is a ZIP holding exactly these members, and nothing else::

    manifest.json                   canonical JSON (sorted keys, no spaces, ASCII): the signed bytes
    manifest.sig                    JSON {"algorithm": "HMAC-SHA-256", "key_id", "signature"}
    artifacts/<sha256>.<format>     one per fitted object, named by the SHA-256 of its bytes

The manifest (format ``nirsflow-bundle``, ``format_version`` 1)::

    format, format_version, created_at
    versions    python, numpy, scikit-learn, joblib, nirsflow that fitted the chain (as the
                chain recorded them when it was saved; storage/versions.py)
    exported_with  the same, of the environment that wrote the bundle
    chain       the stored chain as ``get_chain`` returns it: steps, model_step_idx,
                model_class, preprocessings, fold_strategy, fold_artifacts,
                shared_artifacts, fold_weights, task_type, classes, wavelengths,
                n_features, metadata, ...
    source      where it was exported from: chain id, run (id, name), pipeline (id, name,
                dataset, config, scores)
    artifacts   {artifact_id: {member, sha256, format, size_bytes, operator_class, artifact_type}}

Signing: HMAC-SHA-256 over the exact bytes of ``manifest.json``; since the manifest holds
every artifact's SHA-256, the signature covers the artifacts too. The key is, in order:
the ``NIRSFLOW_BUNDLE_KEY`` environment variable (64 hexadecimal characters are decoded
to the 32 bytes they spell; any other value is used as its UTF-8 text, at least 16
bytes), else the workspace's own ``.nirsflow/bundle.key`` (32 random bytes, written hex
encoded with 0600 permissions on the first export, so
``export NIRSFLOW_BUNDLE_KEY=$(cat <workspace>/.nirsflow/bundle.key)`` carries it to
another machine).

Reading (``read_bundle``, used by ``load_bundle`` and ``WorkspaceStore.import_bundle``)
checks, in order, and unpickles nothing until all of it passed:

1. member names: no ``..``, no absolute path, no backslash, no symlink entry, no
   encrypted or oversized entry, no duplicate, nothing the manifest does not list;
   member names are never used as file paths (bytes are read into memory);
2. the signature (see ``_check_signature`` for the rules; ``trusted=True`` waives a
   missing or unknown signature, never a broken one);
3. the manifest's shape, and that every artifact member hashes to its SHA-256;
4. the scikit-learn major.minor version: a warning naming both, or a refusal in strict mode.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import math
import os
import re
import secrets
import stat
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import joblib
import numpy as np

from . import nirs4all_bundles
from .artifacts import FORMATS
from .atomic import atomic_path, fsync_folder
from .chains import FOLD_STRATEGIES, referenced_artifacts
from .replay import ReplayableChain
from .versions import major_minor, sklearn_mismatch
from .errors import (BundleError, BundleIntegrityError, BundleTrustError, BundleVersionError,
                     BundleVersionWarning, ReplayError)

BUNDLE_FORMAT = "nirsflow-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
ALGORITHM = "HMAC-SHA-256"
KEY_ENV = "NIRSFLOW_BUNDLE_KEY"
KEY_FILE = Path(".nirsflow") / "bundle.key"
KEY_BYTES = 32
MIN_KEY_BYTES = 16
#: Refuse bundles whose members would unpack to more than this (a ZIP bomb guard).
MAX_UNPACKED_BYTES = 4 << 30
MAX_MEMBERS = 10_000

_HASH = re.compile(r"^[0-9a-f]{64}$")
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")
_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # member timestamps say nothing; the manifest has created_at


# -- versions ------------------------------------------------------------------------
# -- keys ----------------------------------------------------------------------------
def parse_key(value: bytes | str | os.PathLike, origin: str = "the key") -> bytes:
    """Key bytes from bytes (as is), a path (a key file), or text (64 hex characters are
    decoded to 32 bytes; any other text is used as UTF-8). At least 16 bytes."""
    if isinstance(value, os.PathLike):
        return read_key_file(Path(value))
    if isinstance(value, str):
        text = value.strip()
        key = bytes.fromhex(text) if _HEX_KEY.match(text) else text.encode("utf-8")
    elif isinstance(value, (bytes, bytearray)):
        key = bytes(value)
    else:
        raise BundleTrustError(f"{origin} must be bytes, text or a key file path, got {type(value).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise BundleTrustError(f"{origin} is {len(key)} bytes long; a bundle key needs at least "
                               f"{MIN_KEY_BYTES} (use 64 hex characters for a random 32-byte key)")
    return key


def key_id(key: bytes) -> str:
    """A short public name of a key (an HMAC of a constant: it reveals nothing the
    signature itself does not), so an error can say which key signed a bundle."""
    return hmac.new(key, b"nirsflow bundle key id", hashlib.sha256).hexdigest()[:16]


def env_key() -> bytes | None:
    value = os.environ.get(KEY_ENV)
    if not value:
        return None
    return parse_key(value, f"the {KEY_ENV} environment variable")


def read_key_file(path: Path) -> bytes:
    """A key file: 64 hex characters (as the workspace writes it), or other text/bytes used as is.
    Opened without following symlinks; a key others can read is used with a warning."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise BundleTrustError(f"bundle key file {path} does not exist") from None
    except OSError as exc:
        raise BundleTrustError(f"bundle key file {path} cannot be opened ({exc}; a symlink?); "
                               "refusing to use it") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BundleTrustError(f"bundle key file {path} is not a regular file; refusing to use it")
        raw = fh.read(1 << 16)
    if info.st_mode & 0o077 and os.name == "posix":
        warnings.warn(f"bundle key file {path} can be read by other users (mode {stat.S_IMODE(info.st_mode):o}); "
                      f"chmod 600 it", UserWarning, stacklevel=3)
    try:
        value: bytes | str = raw.decode("ascii")
    except UnicodeDecodeError:
        value = raw
    return parse_key(value, f"bundle key file {path}")


def workspace_key(workspace: Path, *, create: bool) -> bytes | None:
    """The workspace's own key; created (32 random bytes, hex, mode 0600) when asked."""
    path = Path(workspace) / KEY_FILE
    if os.path.lexists(path):
        return read_key_file(path)
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".bundle.key.", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_bytes(KEY_BYTES).hex())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(temp, path)  # appears whole; a concurrent first export keeps its own
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: create it exclusively instead
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w", encoding="ascii") as fh:
                    fh.write(Path(temp).read_text(encoding="ascii"))
                    fh.flush()
                    os.fsync(fh.fileno())
        fsync_folder(path.parent)
    finally:
        Path(temp).unlink(missing_ok=True)
    return read_key_file(path)


def signing_key(workspace: Path) -> bytes:
    """The key an export signs with: the environment's, else the workspace's own."""
    return env_key() or workspace_key(workspace, create=True)


def keys_at_hand(workspace: Path | None = None, key=None) -> list[tuple[bytes, str]]:
    """The keys a bundle is checked against, each with where it came from."""
    keys = []
    if key is not None:
        keys.append((parse_key(key, "the key argument"), "the key argument"))
    elif (k := env_key()) is not None:
        keys.append((k, f"the {KEY_ENV} environment variable"))
    if workspace is not None and (k := workspace_key(workspace, create=False)) is not None:
        keys.append((k, f"the key of workspace {workspace}"))
    return keys


# -- writing ---------------------------------------------------------------------------
def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def signature_member(manifest_bytes: bytes, key: bytes) -> bytes:
    """The bytes of ``manifest.sig`` for these exact manifest bytes."""
    signature = hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()
    return canonical_json({"algorithm": ALGORITHM, "key_id": key_id(key), "signed_member": MANIFEST,
                           "signature": signature})


def member_name(artifact_id: str, format: str) -> str:
    return f"artifacts/{artifact_id}.{format}"


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, _FIXED_TIME)
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def write_bundle(path: str | Path, manifest: dict, read: Callable[[str], bytes], key: bytes) -> Path:
    """Write a signed bundle atomically; ``read(artifact_id)`` gives each artifact's
    verified bytes (a failure leaves no file behind)."""
    manifest_bytes = canonical_json(manifest)
    path = Path(path)
    with atomic_path(path) as temp:
        with zipfile.ZipFile(temp, "w") as bundle:
            bundle.writestr(_zip_info(MANIFEST), manifest_bytes)
            bundle.writestr(_zip_info(SIGNATURE), signature_member(manifest_bytes, key))
            for artifact_id, entry in sorted(manifest["artifacts"].items()):
                data = read(artifact_id)
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise BundleIntegrityError(f"artifact {artifact_id} does not hash to its id; not exported")
                bundle.writestr(_zip_info(entry["member"]), data)
    return path


# -- reading ---------------------------------------------------------------------------
@dataclass
class VerifiedBundle:
    """A bundle whose names, signature (or its waiver), manifest and hashes were checked.
    Nothing in it has been unpickled."""

    path: Path
    manifest: dict
    manifest_sha256: str
    signature: str  # how trust was established: "verified with ...", or why it was waived
    data: dict[str, bytes] = field(repr=False)  # artifact_id -> bytes (hash-checked)
    warnings: list[str] = field(default_factory=list)


def read_bundle(path: str | Path, *, keys: Iterable[tuple[bytes, str]] = (), trusted: bool = False,
                strict: bool = False) -> VerifiedBundle:
    path = Path(path)
    keys = list(keys)
    if not path.is_file():
        raise BundleError(f"bundle {path} does not exist or is not a file")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            _check_names(path, infos)
            by_name = {info.filename: info for info in infos}
            if nirs4all_bundles.is_nirs4all_bundle(by_name):
                return nirs4all_bundles.read(path, zf, by_name, trusted)
            if MANIFEST not in by_name:
                raise BundleError(f"bundle {path} has no {MANIFEST}; it is not a nirsflow bundle")
            manifest_bytes = _read(zf, by_name[MANIFEST], path)
            sig_bytes = _read(zf, by_name[SIGNATURE], path) if SIGNATURE in by_name else None
            manifest = _parse_manifest(path, manifest_bytes)
            listed = {entry["member"]: artifact_id for artifact_id, entry in manifest["artifacts"].items()}
            unlisted = sorted(set(by_name) - set(listed) - {MANIFEST, SIGNATURE})
            if unlisted:
                raise BundleError(f"bundle {path} holds members its manifest does not list: {unlisted}; "
                                  "refused")
            missing = sorted(set(listed) - set(by_name))
            signature = _check_signature(path, manifest_bytes, sig_bytes, keys, trusted)
            if missing:
                raise BundleIntegrityError(f"bundle {path} lacks members its manifest lists: {missing}")
            _check_chain(path, manifest)
            data = {}
            for member, artifact_id in sorted(listed.items()):
                raw = _read(zf, by_name[member], path)
                found = hashlib.sha256(raw).hexdigest()
                if found != manifest["artifacts"][artifact_id]["sha256"]:
                    raise BundleIntegrityError(
                        f"member {member} of bundle {path} is corrupt or was altered: its bytes hash to "
                        f"{found}, the manifest says {artifact_id}; nothing was loaded")
                data[artifact_id] = raw
    except zipfile.BadZipFile as exc:
        raise BundleError(f"bundle {path} is not a readable ZIP file: {exc}") from None
    notes = _check_versions(path, manifest, strict)
    return VerifiedBundle(path, manifest, hashlib.sha256(manifest_bytes).hexdigest(), signature, data, notes)


def _check_names(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    if len(infos) > MAX_MEMBERS:
        raise BundleError(f"bundle {path} has {len(infos)} members; refusing more than {MAX_MEMBERS}")
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.orig_filename
        problem = _name_problem(name)
        if problem is None and stat.S_ISLNK(info.external_attr >> 16):
            problem = "is a symbolic link entry"
        if problem is None and info.flag_bits & 0x1:
            problem = "is encrypted"
        if problem is not None:
            raise BundleError(f"bundle {path}: member {name!r} {problem}; refused (member names are "
                              "never used as paths, and a nirsflow bundle never holds such a member)")
        if name in seen:
            raise BundleError(f"bundle {path} holds member {name!r} twice; refused")
        seen.add(name)
        total += info.file_size
        if total > MAX_UNPACKED_BYTES:
            raise BundleError(f"bundle {path} would unpack to more than {MAX_UNPACKED_BYTES} bytes; refused")


def _name_problem(name: str) -> str | None:
    if not name:
        return "has an empty name"
    if "\x00" in name:
        return "has a NUL byte in its name"
    if "\\" in name:
        return "has a backslash in its name"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "climbs out of its folder ('..', a zip-slip)"
    if any(not _SAFE_PART.match(part) for part in parts):
        return "is not a plain relative name"
    return None


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    try:
        with zf.open(info) as fh:
            data = fh.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        raise BundleIntegrityError(f"member {info.filename} of bundle {path} is damaged and cannot be "
                                   f"read ({exc}); nothing was loaded") from None
    if len(data) != info.file_size:
        raise BundleIntegrityError(f"member {info.filename} of bundle {path} is not the size its header says")
    return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _parse_manifest(path: Path, raw: bytes) -> dict:
    try:
        manifest = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{MANIFEST} of bundle {path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"bundle {path} is not a {BUNDLE_FORMAT} (its manifest says format "
                          f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"bundle {path} has no valid format_version (found {version!r})")
    if version > BUNDLE_VERSION:
        raise BundleError(f"bundle {path} has format version {version}, written by a newer nirsflow; "
                          f"this one reads up to version {BUNDLE_VERSION}: upgrade nirsflow")
    artifacts = manifest.get("artifacts")
    if not isinstance(artifacts, dict) or not isinstance(manifest.get("chain"), dict):
        raise BundleError(f"the manifest of bundle {path} lacks its 'chain' or 'artifacts' map")
    for artifact_id, entry in artifacts.items():
        if not _HASH.match(str(artifact_id)) or not isinstance(entry, dict):
            raise BundleError(f"the manifest of bundle {path} lists an artifact id that is not a "
                              f"SHA-256: {artifact_id!r}")
        if entry.get("format") not in FORMATS:
            raise BundleError(f"artifact {artifact_id} in bundle {path} has unknown format "
                              f"{entry.get('format')!r}; expected one of {FORMATS}")
        if entry.get("sha256") != artifact_id or entry.get("member") != member_name(artifact_id, entry["format"]):
            raise BundleError(f"artifact {artifact_id} in bundle {path}: its member must be "
                              f"{member_name(artifact_id, entry['format'])!r} with sha256 equal to its id; "
                              f"found member {entry.get('member')!r}, sha256 {entry.get('sha256')!r}")
    if not isinstance(manifest.get("versions", {}), dict):
        raise BundleError(f"the manifest of bundle {path} has a malformed 'versions' map")
    return manifest


def _check_signature(path: Path, manifest_bytes: bytes, sig_bytes: bytes | None,
                     keys: list[tuple[bytes, str]], trusted: bool) -> str:
    """Returns how trust was established. Rules:

    * a signature that verifies with a key at hand: accepted;
    * a signature made with a key at hand (same key id) that does not verify: the
      manifest was changed after signing, refused even with ``trusted=True``;
    * unsigned, signed with a key not at hand, or no key at hand at all: refused with
      ``BundleTrustError`` unless ``trusted=True``.
    """
    how = ("pass trusted=True if you trust where this bundle came from (it runs the code its "
           "artifacts name when they are loaded)")
    key_hint = (f"set {KEY_ENV} to the exporting workspace's key (the hex in "
                f"<workspace>/{KEY_FILE.as_posix()}) or pass key=")
    if sig_bytes is None:
        if trusted:
            return "unsigned; trusted=True"
        raise BundleTrustError(f"bundle {path} is not signed, so nothing vouches for it; {how}")
    try:
        sig = json.loads(sig_bytes.decode("ascii"))
        claimed, signature = str(sig["key_id"]), str(sig["signature"])
        if sig.get("algorithm") != ALGORITHM or not _HASH.match(signature):
            raise ValueError(f"algorithm {sig.get('algorithm')!r}")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        if trusted:
            return f"malformed signature ({exc}); trusted=True"
        raise BundleTrustError(f"bundle {path} has a malformed {SIGNATURE} ({exc}); {how}") from None
    for key, origin in keys:
        expected = hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected, signature):
            return f"verified with {origin}"
    for key, origin in keys:
        if hmac.compare_digest(key_id(key), claimed):
            raise BundleIntegrityError(
                f"{MANIFEST} of bundle {path} was changed after it was signed: its signature names "
                f"{origin} (key id {claimed}) but no longer matches its bytes; refused")
    if trusted:
        return f"signed with key id {claimed}, not at hand; trusted=True"
    if not keys:
        raise BundleTrustError(f"bundle {path} is signed (key id {claimed}) but no bundle key is at hand "
                               f"to check it: {key_hint}, or {how}")
    ours = ", ".join(f"{key_id(k)} ({origin})" for k, origin in keys)
    raise BundleTrustError(f"bundle {path} was signed with another key (key id {claimed}; the keys at hand "
                           f"are {ours}): {key_hint}, or {how}")


def _check_chain(path: Path, manifest: dict) -> None:
    """The chain is plain data, but replay and import rely on its shape: check it."""
    chain = manifest["chain"]

    def bad(what: str) -> BundleError:
        return BundleError(f"the chain in bundle {path} is malformed: {what}")

    steps = chain.get("steps")
    if not isinstance(steps, list) or not steps or not all(
            isinstance(s, dict) and isinstance(s.get("step_idx"), int) for s in steps):
        raise bad("'steps' must be a non-empty list of steps with integer step_idx")
    if not isinstance(chain.get("model_step_idx"), int):
        raise bad("'model_step_idx' must be an integer")
    if chain.get("fold_strategy") not in FOLD_STRATEGIES:
        raise bad(f"'fold_strategy' must be one of {FOLD_STRATEGIES}, got {chain.get('fold_strategy')!r}")
    for name in ("fold_artifacts", "shared_artifacts"):
        if not isinstance(chain.get(name) or {}, dict):
            raise bad(f"{name!r} must be a map")
    if not chain.get("fold_artifacts"):
        raise bad("it has no fold artifacts")
    weights = chain.get("fold_weights")
    if weights is not None and (not isinstance(weights, dict) or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights.values())):
        raise bad("'fold_weights' must map folds to finite numbers")
    if chain.get("task_type") == "classification" and not isinstance(chain.get("classes"), list):
        raise bad("a classification chain needs its 'classes'")
    grid = chain.get("wavelengths")
    if grid is not None and (not isinstance(grid, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in grid)):
        raise bad("'wavelengths' must be a list of numbers")
    n = chain.get("n_features")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise bad("'n_features' must be a positive integer")
    try:
        referenced = referenced_artifacts(steps, chain.get("fold_artifacts") or {}, chain.get("shared_artifacts") or {},
                                          chain.get("metadata"))
    except Exception as exc:
        raise bad(str(exc)) from None
    listed = set(manifest["artifacts"])
    if referenced != listed:
        raise bad(f"it references artifacts the manifest does not list ({sorted(referenced - listed)}) "
                  f"or the manifest lists artifacts it does not use ({sorted(listed - referenced)})")


def _check_versions(path: Path, manifest: dict, strict: bool) -> list[str]:
    mismatch = sklearn_mismatch(manifest.get("versions"))
    if mismatch is None:
        return []
    fitted, here = mismatch
    message = (f"bundle {path} was fitted with scikit-learn {fitted}, this environment has scikit-learn "
               f"{here}: its models may load or predict differently")
    if strict:
        raise BundleVersionError(message + f"; refused in strict mode (install scikit-learn "
                                           f"{'.'.join(map(str, major_minor(fitted) or ()))}.x, or strict=False)")
    warnings.warn(message, BundleVersionWarning, stacklevel=4)
    return [message]


# -- loading ---------------------------------------------------------------------------
class Bundle:
    """A loaded bundle: predicts outside any workspace through ``ReplayableChain``, the
    code ``WorkspaceStore.replay_chain`` runs, so both give the same numbers."""

    def __init__(self, verified: VerifiedBundle) -> None:
        self.path = verified.path
        self.manifest = verified.manifest
        self.manifest_sha256 = verified.manifest_sha256
        self.signature = verified.signature
        chain = dict(verified.manifest["chain"])
        if chain.get("wavelengths") is not None:
            chain["wavelengths"] = np.asarray(chain["wavelengths"], dtype=float)
        self.chain = chain
        self._objects: dict[str, Any] = {}
        # Every check passed (read_bundle); only now is anything unpickled, from memory.
        for artifact_id, data in sorted(verified.data.items()):
            member = verified.manifest["artifacts"][artifact_id]["member"]
            try:
                self._objects[artifact_id] = joblib.load(io.BytesIO(data))
            except Exception as exc:
                raise BundleError(f"member {member} of bundle {self.path} cannot be loaded here: "
                                  f"{type(exc).__name__}: {exc}") from exc
        self._replayable = ReplayableChain(chain, self._objects.__getitem__)

    @property
    def task_type(self) -> str | None:
        return self._replayable.task_type

    @property
    def classes(self) -> list | None:
        return self._replayable.classes

    @property
    def versions(self) -> dict:
        return dict(self.manifest.get("versions") or {})

    def predict(self, X, wavelengths=None, *, diagnostics: bool = False):
        """Predictions; with ``diagnostics=True`` a ``(predictions, checks)`` pair, checks
        as ``WorkspaceStore.replay_chain(..., diagnostics=True)`` gives them."""
        out = self._replayable.replay(X, wavelengths, diagnostics=diagnostics)
        return (out[0], out[2]) if diagnostics else out[0]

    def predict_proba(self, X, wavelengths=None) -> np.ndarray:
        """Mean class probabilities; columns follow ``bundle.classes``."""
        if self.task_type != "classification":
            raise ReplayError(f"chain {self.chain.get('chain_id')} is a regression chain: it has no probabilities")
        return self._replayable.replay(X, wavelengths)[1]

    def __repr__(self) -> str:
        return (f"Bundle({str(self.path)!r}, chain={self.chain.get('chain_id')!r}, "
                f"model={self.chain.get('model_class')!r}, signature={self.signature!r})")


def load_bundle(path: str | Path, *, key: bytes | str | os.PathLike | None = None, trusted: bool = False,
                strict: bool = False) -> Bundle:
    """Load a ``.n4a`` bundle outside any workspace, after checking it whole.

    ``key``: the signing key (bytes, text as ``NIRSFLOW_BUNDLE_KEY``, or a key file
    path); defaults to ``NIRSFLOW_BUNDLE_KEY``. ``trusted=True`` loads an unsigned or
    foreign-signed bundle (or one with no key at hand); hashes and member rules still
    hold. ``strict=True`` refuses a different scikit-learn major.minor instead of warning.
    Nothing is written anywhere."""
    return Bundle(read_bundle(path, keys=keys_at_hand(key=key), trusted=trusted, strict=strict))
