"""Bundles written by nirs4all itself (``.n4a``), read as nirsflow bundles.

nirs4all's current release (1.4) writes a ZIP of ``manifest.json`` (chain id, model class,
model step, fold strategy), ``chain.json`` (the chain as its store saved it, artifact
ids and all), ``pipeline.json`` and one member per fitted object, named for its place in
the chain: ``artifacts/step_<i>_sub<k>.joblib`` (the k-th shared artifact of step i) and
``artifacts/step_<model>_fold<f>.joblib`` (the model of fold ``fold_<f>``; ``foldfinal``:
the refit model). ``read`` turns one into a ``VerifiedBundle`` whose manifest is a
nirsflow manifest (artifacts named by the SHA-256 of their bytes, the chain re-addressed
to them), so loading and importing it is what they are for any bundle.

nirs4all signs nothing: a nirs4all bundle is read only with ``trusted=True``. Member
names follow the rules of ``storage.bundles`` and nothing is unpickled here.

nirs4all 0.7's ``export_chain`` wrote members named by file hash, with no map from the
chain's artifact ids to them: no loader, nirs4all's included, can tell which member is
which step; such a bundle is refused with a message that says so.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

from .errors import BundleError, BundleIntegrityError, BundleTrustError

_MEMBER = re.compile(r"^artifacts/step_(\d+)_(?:sub(\d+)|fold([A-Za-z0-9]+))\.joblib$")
_HASHED = re.compile(r"^artifacts/[0-9a-f]{64}\.\w+$")
_OTHERS = {"manifest.json", "chain.json", "pipeline.json"}


def is_nirs4all_bundle(names) -> bool:
    """Whether a bundle's members are nirs4all's (a chain.json beside the manifest)."""
    return "chain.json" in names and "manifest.json" in names


def read(path: Path, zf: zipfile.ZipFile, by_name: dict[str, zipfile.ZipInfo], trusted: bool):
    from . import bundles

    names = set(by_name)
    if "pipeline.json" not in names and any(_HASHED.match(n) for n in names):
        raise BundleError(
            f"bundle {path} was written by nirs4all 0.7's export_chain, which names its artifacts by file hash "
            "with no map from the chain's artifact ids to them: no loader can tell which member is which step "
            "(nirs4all's own cannot read it either). Import the workspace it came from (`nirsflow "
            "import-workspace`), or export the chain again with nirs4all 1.4 or later.")
    unknown = sorted(n for n in names - _OTHERS if not _MEMBER.match(n))
    if unknown:
        raise BundleError(f"bundle {path} looks like nirs4all's but holds members nirsflow does not know: "
                          f"{unknown}; refused")
    if not trusted:
        raise BundleTrustError(f"bundle {path} was written by nirs4all, which does not sign its bundles, so "
                               "nothing vouches for it; pass trusted=True (--trusted) if you trust where it came "
                               "from (it runs the code its artifacts name when they are loaded)")
    try:
        manifest = json.loads(bundles._read(zf, by_name["manifest.json"], path))
        chain = json.loads(bundles._read(zf, by_name["chain.json"], path))
    except ValueError as exc:
        raise BundleError(f"bundle {path}: its manifest.json or chain.json is not valid JSON: {exc}") from None
    data: dict[str, bytes] = {}
    place: dict[tuple, str] = {}  # ("sub", step, k) or ("fold", fold) -> sha256
    for name in sorted(names - _OTHERS):
        raw = bundles._read(zf, by_name[name], path)
        digest = hashlib.sha256(raw).hexdigest()
        data[digest] = raw
        step, sub, fold = _MEMBER.match(name).groups()
        place[("sub", step, int(sub)) if sub is not None else ("fold", step, fold)] = digest
    converted = _chain(path, manifest, chain, place)
    operators = {s["step_idx"]: s.get("operator_class") for s in converted["steps"]}
    model = converted["model_step_idx"]
    owners = {a: idx for idx, ids in converted["shared_artifacts"].items() for a in ids}
    ours = {"format": bundles.BUNDLE_FORMAT, "format_version": bundles.BUNDLE_VERSION,
            "created_at": manifest.get("exported_at"), "versions": {}, "chain": converted,
            "source": {"chain_id": manifest.get("chain_id"), "nirs4all_bundle": path.name},
            "artifacts": {a: {"member": bundles.member_name(a, "joblib"), "sha256": a, "format": "joblib",
                              "size_bytes": len(raw),
                              "operator_class": operators.get(int(owners[a]) if a in owners else model),
                              "artifact_type": "transformer" if a in owners else "model"}
                          for a, raw in sorted(data.items())}}
    bundles._check_chain(path, ours)
    manifest_bytes = bundles.canonical_json(ours)
    return bundles.VerifiedBundle(path, ours, hashlib.sha256(manifest_bytes).hexdigest(),
                                  "written by nirs4all, which signs nothing; trusted=True", data)


def _chain(path: Path, manifest: dict, chain: dict, place: dict[tuple, str]) -> dict:
    """The chain of chain.json with its artifact ids replaced by the SHA-256 of the members
    nirs4all named for their place."""
    model = chain.get("model_step_idx")
    if not isinstance(model, int) or not isinstance(chain.get("steps"), list):
        raise BundleError(f"bundle {path}: chain.json lacks its steps or model_step_idx")
    ids: dict[str, str] = {}
    shared: dict[str, list[str]] = {}
    for step, values in (chain.get("shared_artifacts") or {}).items():
        if str(step).startswith("_"):
            raise BundleError(f"bundle {path} holds a multi-source chain ({step}), which nirsflow cannot replay")
        values = values if isinstance(values, list) else [values]
        shared[str(step)] = [_placed(path, place, ("sub", str(step), k), ids, a) for k, a in enumerate(values)]
    folds: dict[str, str] = {}
    for fold, artifact_id in (chain.get("fold_artifacts") or {}).items():
        folds[str(fold)] = _placed(path, place, ("fold", str(model), str(fold).removeprefix("fold_")), ids,
                                   artifact_id)
    strategy = "per_fold"
    if "fold_final" in folds:  # a refit model replays alone
        folds, strategy = {"refit": folds["fold_final"]}, "refit"
    steps = [{**s, "artifact_ids": [ids[a] for a in s.get("artifact_ids") or [] if a in ids]}
             for s in chain["steps"]]
    return {"chain_id": manifest.get("chain_id"), "steps": steps, "model_step_idx": model,
            "model_class": manifest.get("model_class") or "unknown", "preprocessings": manifest.get("preprocessings")
            or "", "fold_strategy": strategy, "fold_artifacts": folds, "shared_artifacts": shared,
            "fold_weights": None, "task_type": None, "classes": None, "wavelengths": None, "n_features": None,
            "metadata": {"nirs4all_bundle": {"chain_id": manifest.get("chain_id"),
                                             "exported_at": manifest.get("exported_at")}}}


def _placed(path: Path, place: dict, key: tuple, ids: dict[str, str], artifact_id: str) -> str:
    if key not in place:
        member = f"artifacts/step_{key[1]}_{'sub' if key[0] == 'sub' else 'fold'}{key[2]}.joblib"
        raise BundleIntegrityError(f"bundle {path} lacks {member}, which its chain.json needs")
    ids[artifact_id] = place[key]
    return place[key]
