"""Replaying a stored chain: ``ReplayableChain(chain, load)``, by the rule of ``nirs.replay``.

A stored chain (a row of ``chains`` as ``get_chain`` returns it, or the chain in a
bundle's manifest) names, for every fold and step, the fitted artifact to use;
``load(artifact_id)`` gives the object. The store's ``replay_chain`` (artifacts loaded as
needed, cached), a bundle's ``predict`` (objects from the bundle) and the inbox scorer
(``WorkspaceStore.load_chain``: every artifact loaded up front, picklable for a Prefect
task) are all this class, and the rule itself (input checks, grid, folds, each fold's
output, how they combine) is ``nirs.replay``'s alone, the functions training computes its
recorded predictions with: so all of them give the training-time numbers.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

from nirs import replay as rule

from .errors import ReplayError
from .versions import version_mismatch

Loader = Callable[[str], Any]

#: The key in a chain's metadata of its outlier checks' artifacts, ``{fold_id: artifact_id}``
#: (``nirs.diagnostics.CalibrationDiagnostics``, one per fold, built at training): apart
#: from fold_artifacts, which hold the steps the replay rule runs.
DIAGNOSTICS = "diagnostics"


@contextmanager
def _said_by_the_store() -> Iterator[None]:
    """The rule's errors, raised as the store's ``ReplayError`` (a subclass of the rule's)."""
    try:
        yield
    except rule.ReplayError as exc:
        if isinstance(exc, ReplayError):
            raise
        raise ReplayError(str(exc), problem=exc.problem, expected=exc.expected, found=exc.found) from None


class ReplayableChain:
    """A stored chain and a way to load its artifacts: what replays new spectra.

    Chains shaped as the spec's original records them replay too: a fold may map to its
    model artifact alone, a step of ``shared_artifacts`` may list several artifacts
    (applied in order), and steps saved with no artifact (a splitter, a stateless
    transformer) follow ``nirs.replay.step_role``. ``trusted_modules`` adds modules a
    stateless step may be rebuilt from (to nirs, sklearn and ``NIRSFLOW_TRUSTED_MODULES``).

    A chain saved with its wavelength grid resamples spectra given on another grid that
    covers it and refuses one that does not. A chain saved without a grid cannot resample:
    spectra must have the width it was trained on (``n_features``, or when that was not
    recorded either, the fitted first step's ``n_features_in_``), checked before any
    transform runs, and are taken to be on the training grid."""

    def __init__(self, chain: dict, load: Loader, trusted_modules=None) -> None:
        self.chain = chain
        self.load = load
        self.trusted = rule.trusted_modules(trusted_modules)
        grid = chain.get("wavelengths")
        self.trained_grid = None if grid is None else np.asarray(grid, dtype=np.float64)
        self.name = f"chain {chain.get('chain_id')}"

    chain_id = property(lambda self: self.chain.get("chain_id"))
    model_class = property(lambda self: self.chain.get("model_class"))

    @property
    def task_type(self) -> str:
        """The chain's task; for a chain saved without one, what its fitted model is."""
        if self.chain.get("task_type"):
            return self.chain["task_type"]
        with _said_by_the_store():
            model = self.load(self._artifacts(self._folds()[0], self.chain["model_step_idx"])[0])
        return "classification" if rule.is_classifier(model) else "regression"

    @property
    def classes(self) -> list | None:
        """The chain's classes; for a classifier saved without them, its models' ``classes_``."""
        if self.chain.get("classes") is not None or self.task_type != "classification":
            return self.chain.get("classes")
        with _said_by_the_store():
            return rule.classes_of(self.load(self._artifacts(f, self.chain["model_step_idx"])[0])
                                   for f in self._folds())

    @property
    def version_mismatch(self) -> str | None:
        """What to tell the user when another scikit-learn fitted this chain."""
        return version_mismatch(self.chain)

    def check(self, wavelengths, n_columns: int) -> dict:
        """Refuse spectra that cannot be replayed (``ReplayError`` with expected and found);
        say what will be resampled: ``{"resampled_from": "1211 wavelengths, 590-1800"}``."""
        with _said_by_the_store():
            source = rule.check_input(self.trained_grid, self.chain.get("n_features"), wavelengths, n_columns,
                                      self.name)
            if source is None and self.chain.get("n_features") is None:
                self._check_width(n_columns)
        return {} if source is None else {"resampled_from": rule.grid_text(source)}

    @property
    def diagnostics(self) -> dict:
        """{fold_id: artifact id} of the chain's outlier checks ({} for a chain without)."""
        metadata = self.chain.get("metadata")
        found = metadata.get(DIAGNOSTICS) if isinstance(metadata, dict) else None
        return found if isinstance(found, dict) else {}

    @property
    def has_diagnostics(self) -> bool:
        return bool(self.diagnostics) and all(f in self.diagnostics for f in self._folds())

    def replay(self, X, wavelengths=None, diagnostics: bool = False):
        """(predictions, class probabilities or None): labels in their original type for
        a classifier, whose probability columns follow ``classes``. With ``diagnostics``,
        a third item: the outlier checks of every row ({t2, q, t2_ratio, q_ratio, y_out,
        flag}; ``nirs.diagnostics``), each fold's evaluated on the spectra its model saw
        and merged with the predictions' weights."""
        chain = self.chain
        with _said_by_the_store():
            if diagnostics and not self.has_diagnostics:
                raise ReplayError(f"{self.name} has no outlier checks for its folds {self._folds()} (it was "
                                  "trained before they were recorded); train it again to get them")
            X = self._fit_to_grid(X, wavelengths)
            folds = self._folds()
            weights = chain.get("fold_weights")
            weights = None if not weights else [weights.get(f, 1.0) for f in folds]
            task_type, classes = self.task_type, self.classes
            checks: list | None = [] if diagnostics else None
            outputs = self._fold_outputs(X, folds, task_type, classes, checks)
        combined = rule.combine(outputs, weights)
        pred, proba = ((rule.labels_from_proba(combined, classes), combined)
                       if task_type == "classification" else (combined, None))
        if not diagnostics:
            return pred, proba
        first, *others = [self.load(self.diagnostics[f]) for f in folds]
        return pred, proba, first.combine(checks, weights, None if proba is not None else pred, others)

    def preprocess(self, X, wavelengths=None, fold: str | None = None,
                   spectral_only: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """X and its grid after the transformer steps of one fold (the first replayed fold
        by default): what that fold's model sees. ``spectral_only``: only the leading
        spectral steps (``spectral_steps``), the spectra a chemist would plot, without the
        per-wavelength scaling that follows them."""
        with _said_by_the_store():
            X = self._fit_to_grid(X, wavelengths)
            grid = self.trained_grid
            steps = self._transformers()
            if spectral_only:
                steps = steps[:len(self.spectral_steps())]
            for key in self._fold_ops(fold or self._folds()[0], steps):
                X, grid = self._apply(key, X, grid)
        return X, grid

    def spectral_steps(self) -> list[str]:
        """The class names of the leading transformer steps that work on whole spectra
        (nirsflow's own operators: SNV, MSC, Savitzky-Golay, ...), up to the first other
        one (a scikit-learn scaler or projection, which works wavelength by wavelength)."""
        names = []
        for step in self._transformers():
            operator = step.get("operator_class", "")
            if not operator.startswith("nirs."):
                break
            names.append(operator.rsplit(".", 1)[-1])
        return names

    def describe(self) -> dict:
        """Check that every replayed fold can be replayed as laid out (its steps, artifacts
        and model; ``ReplayError`` naming what cannot) without any spectra, and say what the
        chain is: ``{"task_type", "classes", "n_features"}`` (the width its first fitted
        object was fitted on, None when it does not say)."""
        with _said_by_the_store():
            folds = self._folds()
            for fold in folds:
                self._fold_ops(fold)
                self._artifacts(fold, self.chain["model_step_idx"])
            first = next((key for key in self._fold_ops(folds[0]) if isinstance(key, str)),
                         self._artifacts(folds[0], self.chain["model_step_idx"])[0])
            width = getattr(self.load(first), "n_features_in_", None)
            return {"task_type": self.task_type, "classes": self.classes,
                    "n_features": None if width is None else int(width)}

    # -- the chain's layout ------------------------------------------------------------------
    def _fit_to_grid(self, X, wavelengths) -> np.ndarray:
        X = rule.fit_to_grid(X, self.trained_grid, self.chain.get("n_features"), wavelengths, self.name)
        if self.chain.get("n_features") is None and self.trained_grid is None:
            self._check_width(X.shape[1])
        return X

    def _check_width(self, n_columns: int) -> None:
        """A chain that recorded no width: the first fitted object, before any transform."""
        fold = self._folds()[0]
        for key in self._fold_ops(fold):
            if isinstance(key, str):
                return rule.check_width(self.load(key), n_columns, self.name)
        rule.check_width(self.load(self._artifacts(fold, self.chain["model_step_idx"])[0]), n_columns, self.name)

    def _folds(self) -> list[str]:
        return rule.replay_folds(self.chain["fold_artifacts"], self.chain["fold_strategy"] == "refit", self.name)

    def _steps(self) -> list[dict]:
        return sorted(self.chain["steps"], key=lambda s: s["step_idx"])

    def _transformers(self) -> list[dict]:
        model = self.chain["model_step_idx"]
        return [s for s in self._steps()
                if s["step_idx"] != model and s.get("kind", "transformer") == "transformer"]

    def _fold_ops(self, fold: str, steps: list[dict] | None = None) -> list:
        """A fold's transformer operations in order (of ``steps``, all the transformers by
        default): an artifact id, or ("rebuild", step) for a stateless step saved without
        one; splitters left out."""
        ops: list = []
        for step in self._transformers() if steps is None else steps:
            ids = self._artifacts(fold, step["step_idx"], required=step.get("kind") == "transformer")
            if ids:
                ops.extend(ids)
            elif rule.step_role(step, self.trusted, self.name) == "rebuild":
                ops.append(("rebuild", step["step_idx"]))
        return ops

    def _apply(self, key, X: np.ndarray, grid):
        if isinstance(key, str):
            return rule.transform_with_grid(self.load(key), X, grid)
        step = next(s for s in self.chain["steps"] if s["step_idx"] == key[1])
        return rule.transform_with_grid(rule.rebuild_stateless(step, self.trusted, X, grid, self.name), X, grid)

    def _artifacts(self, fold: str, step_idx: int, required: bool = True) -> list[str]:
        """The artifacts of one step of a fold (several in the original's shared lists,
        applied in order); an empty list for a step saved without any, when not required."""
        chain = self.chain
        per_fold = chain["fold_artifacts"].get(fold)
        if isinstance(per_fold, dict) and str(step_idx) in per_fold:
            return [per_fold[str(step_idx)]]
        if isinstance(per_fold, str) and step_idx == chain["model_step_idx"]:
            return [per_fold]  # the spec's original: a fold maps to its model artifact
        shared = (chain.get("shared_artifacts") or {}).get(str(step_idx))
        ids = [shared] if isinstance(shared, str) else list(shared or [])
        if not ids and (required or step_idx == chain["model_step_idx"]):
            raise ReplayError(f"{self.name} has no artifact for step {step_idx} of {fold}")
        return ids

    def _fold_outputs(self, X: np.ndarray, folds: list[str], task_type: str, classes,
                      checks: list | None = None) -> list[np.ndarray]:
        """Each fold's output (``nirs.replay.fold_output``). Folds that share a fitted
        prefix (a stateless SNV saved once) share its output, kept only until the last fold
        that needs it has used it: a chunk being scored costs a few copies of itself, not
        one per fold and step. Given a list ``checks``, each fold's outlier checks of the
        spectra its model saw are appended to it (the preprocessing is not run twice)."""
        y_steps = [s["step_idx"] for s in self._steps() if s.get("kind") == "y_transformer"]
        prefixes: dict[str, list[tuple]] = {}
        uses: Counter = Counter()
        for fold in folds:
            key: tuple = ()
            prefixes[fold] = []
            for op in self._fold_ops(fold):
                key = key + (op,)
                prefixes[fold].append(key)
            uses.update(prefixes[fold])
        memo: dict[tuple, tuple[np.ndarray, Any]] = {}
        outputs = []
        for fold in folds:
            Xf, grid = X, self.trained_grid
            for key in prefixes[fold]:
                if key not in memo:
                    memo[key] = self._apply(key[-1], Xf, grid)
                Xf, grid = memo[key]
                uses[key] -= 1
                if not uses[key]:
                    del memo[key]
            model = self.load(self._artifacts(fold, self.chain["model_step_idx"])[0])
            outputs.append(rule.fold_output(model, Xf, task_type, classes,
                                            [self.load(a) for idx in y_steps for a in self._artifacts(fold, idx)]))
            if checks is not None:
                checks.append(self.load(self.diagnostics[fold]).evaluate(
                    Xf, outputs[-1] if task_type != "classification" else None))
        return outputs
