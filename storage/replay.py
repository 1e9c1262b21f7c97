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
    """A stored chain and a way to load its artifacts: what replays new spectra."""

    def __init__(self, chain: dict, load: Loader) -> None:
        self.chain = chain
        self.load = load
        grid = chain.get("wavelengths")
        self.trained_grid = None if grid is None else np.asarray(grid, dtype=np.float64)
        self.name = f"chain {chain.get('chain_id')}"

    chain_id = property(lambda self: self.chain.get("chain_id"))
    model_class = property(lambda self: self.chain.get("model_class"))
    task_type = property(lambda self: self.chain.get("task_type"))
    classes = property(lambda self: self.chain.get("classes"))

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
            X = rule.fit_to_grid(X, self.trained_grid, chain.get("n_features"), wavelengths, self.name)
            folds = self._folds()
            weights = chain.get("fold_weights")
            weights = None if not weights else [weights.get(f, 1.0) for f in folds]
            checks: list | None = [] if diagnostics else None
            outputs = self._fold_outputs(X, folds, checks)
        combined = rule.combine(outputs, weights)
        pred, proba = ((rule.labels_from_proba(combined, self.classes), combined)
                       if self.task_type == "classification" else (combined, None))
        if not diagnostics:
            return pred, proba
        first, *others = [self.load(self.diagnostics[f]) for f in folds]
        return pred, proba, first.combine(checks, weights, None if proba is not None else pred, others)

    def preprocess(self, X, wavelengths=None, fold: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """X and its grid after the transformer steps of one fold (the first replayed fold
        by default): what that fold's model sees."""
        with _said_by_the_store():
            X = rule.fit_to_grid(X, self.trained_grid, self.chain.get("n_features"), wavelengths, self.name)
            grid = self.trained_grid
            for idx in self._transformers():
                X, grid = rule.transform_with_grid(self.load(self._artifact(fold or self._folds()[0], idx)), X, grid)
        return X, grid

    # -- the chain's layout ------------------------------------------------------------------
    def _folds(self) -> list[str]:
        return rule.replay_folds(self.chain["fold_artifacts"], self.chain["fold_strategy"] == "refit", self.name)

    def _steps(self) -> list[dict]:
        return sorted(self.chain["steps"], key=lambda s: s["step_idx"])

    def _transformers(self) -> list[int]:
        model = self.chain["model_step_idx"]
        return [s["step_idx"] for s in self._steps()
                if s["step_idx"] != model and s.get("kind", "transformer") == "transformer"]

    def _artifact(self, fold: str, step_idx: int) -> str:
        chain = self.chain
        per_fold = chain["fold_artifacts"].get(fold)
        if isinstance(per_fold, dict) and str(step_idx) in per_fold:
            return per_fold[str(step_idx)]
        if isinstance(per_fold, str) and step_idx == chain["model_step_idx"]:
            return per_fold  # the spec's original: a fold maps to its model artifact
        shared = chain["shared_artifacts"].get(str(step_idx))
        if isinstance(shared, list):
            shared = shared[0] if shared else None
        if shared is None:
            raise ReplayError(f"{self.name} has no artifact for step {step_idx} of {fold}")
        return shared

    def _fold_outputs(self, X: np.ndarray, folds: list[str], checks: list | None = None) -> list[np.ndarray]:
        """Each fold's output (``nirs.replay.fold_output``). Folds that share a fitted
        prefix (a stateless SNV saved once) share its output, kept only until the last fold
        that needs it has used it: a chunk being scored costs a few copies of itself, not
        one per fold and step. Given a list ``checks``, each fold's outlier checks of the
        spectra its model saw are appended to it (the preprocessing is not run twice)."""
        transformers = self._transformers()
        y_steps = [s["step_idx"] for s in self._steps() if s.get("kind") == "y_transformer"]
        prefixes: dict[str, list[tuple]] = {}
        uses: Counter = Counter()
        for fold in folds:
            key: tuple = ()
            prefixes[fold] = []
            for idx in transformers:
                key = key + (self._artifact(fold, idx),)
                prefixes[fold].append(key)
            uses.update(prefixes[fold])
        memo: dict[tuple, tuple[np.ndarray, Any]] = {}
        outputs = []
        for fold in folds:
            Xf, grid = X, self.trained_grid
            for key in prefixes[fold]:
                if key not in memo:
                    memo[key] = rule.transform_with_grid(self.load(key[-1]), Xf, grid)
                Xf, grid = memo[key]
                uses[key] -= 1
                if not uses[key]:
                    del memo[key]
            model = self.load(self._artifact(fold, self.chain["model_step_idx"]))
            outputs.append(rule.fold_output(model, Xf, self.task_type or "regression", self.classes,
                                            [self.load(self._artifact(fold, idx)) for idx in y_steps]))
            if checks is not None:
                checks.append(self.load(self.diagnostics[fold]).evaluate(
                    Xf, outputs[-1] if self.task_type != "classification" else None))
        return outputs
