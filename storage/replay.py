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

    def replay(self, X, wavelengths=None) -> tuple[np.ndarray, np.ndarray | None]:
        """(predictions, class probabilities or None): labels in their original type for
        a classifier, whose probability columns follow ``classes``."""
        chain = self.chain
        with _said_by_the_store():
            X = rule.fit_to_grid(X, self.trained_grid, chain.get("n_features"), wavelengths, self.name)
            folds = self._folds()
            weights = chain.get("fold_weights")
            outputs = self._fold_outputs(X, folds)
        combined = rule.combine(outputs, None if not weights else [weights.get(f, 1.0) for f in folds])
        if self.task_type == "classification":
            return rule.labels_from_proba(combined, self.classes), combined
        return combined, None

    def preprocess(self, X, wavelengths=None, fold: str | None = None,
                   spectral_only: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """X and its grid after the transformer steps of one fold (the first replayed fold
        by default): what that fold's model sees. ``spectral_only``: only the leading
        spectral steps (``spectral_steps``), the spectra a chemist would plot, without the
        per-wavelength scaling that follows them."""
        with _said_by_the_store():
            X = rule.fit_to_grid(X, self.trained_grid, self.chain.get("n_features"), wavelengths, self.name)
            grid = self.trained_grid
            steps = self._transformers()
            if spectral_only:
                steps = steps[:len(self.spectral_steps())]
            for idx in steps:
                X, grid = rule.transform_with_grid(self.load(self._artifact(fold or self._folds()[0], idx)), X, grid)
        return X, grid

    def spectral_steps(self) -> list[str]:
        """The class names of the leading transformer steps that work on whole spectra
        (nirsflow's own operators: SNV, MSC, Savitzky-Golay, ...), up to the first other
        one (a scikit-learn scaler or projection, which works wavelength by wavelength)."""
        names = []
        by_idx = {s["step_idx"]: s for s in self._steps()}
        for idx in self._transformers():
            operator = by_idx[idx].get("operator_class", "")
            if not operator.startswith("nirs."):
                break
            names.append(operator.rsplit(".", 1)[-1])
        return names

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

    def _fold_outputs(self, X: np.ndarray, folds: list[str]) -> list[np.ndarray]:
        """Each fold's output (``nirs.replay.fold_output``). Folds that share a fitted
        prefix (a stateless SNV saved once) share its output, kept only until the last fold
        that needs it has used it: a chunk being scored costs a few copies of itself, not
        one per fold and step."""
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
        return outputs
