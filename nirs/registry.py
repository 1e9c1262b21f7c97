"""Class names in configs: short names, dotted paths, and the JSON form of estimators.

A config names a class by a short name ("SNV", "PLSRegression", "KFold") or by its dotted
path ("sklearn.cross_decomposition.PLSRegression", "mylab.operators.Despike"). Dotted paths
import the module they name, so a config file is trusted code in that sense: load configs
you would also run.
"""

from __future__ import annotations

import difflib
import importlib
import inspect

import numpy as np

from nirs.errors import ConfigError

_OURS = {
    "nirs.operators": ["SNV", "MSC", "SavitzkyGolay", "Detrend", "Normalize", "CropWavelengths", "Resample"],
    "nirs.splitters": ["KennardStone", "SPXY"],
}
_SKLEARN = {
    "sklearn.preprocessing": ["StandardScaler", "MinMaxScaler", "RobustScaler", "MaxAbsScaler", "Normalizer", "FunctionTransformer"],
    "sklearn.decomposition": ["PCA", "TruncatedSVD"],
    "sklearn.cross_decomposition": ["PLSRegression", "PLSCanonical"],
    "sklearn.linear_model": ["LinearRegression", "Ridge", "Lasso", "ElasticNet", "LogisticRegression", "RidgeClassifier"],
    "sklearn.svm": ["SVR", "SVC", "LinearSVC", "LinearSVR"],
    "sklearn.neighbors": ["KNeighborsRegressor", "KNeighborsClassifier"],
    "sklearn.ensemble": ["RandomForestRegressor", "RandomForestClassifier", "GradientBoostingRegressor", "GradientBoostingClassifier"],
    "sklearn.discriminant_analysis": ["LinearDiscriminantAnalysis"],
    "sklearn.compose": ["TransformedTargetRegressor"],
    "sklearn.model_selection": [
        "KFold", "ShuffleSplit", "StratifiedKFold", "StratifiedShuffleSplit", "RepeatedKFold",
        "RepeatedStratifiedKFold", "GroupKFold", "LeaveOneOut",
    ],
}

SHORT_NAMES: dict[str, str] = {
    name: f"{module}.{name}" for table in (_OURS, _SKLEARN) for module, names in table.items() for name in names
}
SHORT_NAMES["SavGol"] = "nirs.operators.SavitzkyGolay"  # the name nirs4all users type

_SHORT_BY_PATH = {path: short for short, path in SHORT_NAMES.items() if short != "SavGol"}


def _unknown(name: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(name, list(SHORT_NAMES), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(
        f"{where}unknown class {name!r}{hint}; use a short name such as 'SNV' or 'PLSRegression', "
        "or a dotted path such as 'sklearn.linear_model.Ridge'"
    )


def resolve_class(name: str, where: str = "") -> type:
    """The class a config names; ConfigError (prefixed with `where`) when there is none."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}a class name must be a non-empty string, got {name!r}")
    path = SHORT_NAMES.get(name.strip(), name.strip())
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise _unknown(name, where)
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise _unknown(name, where) from None
    cls = getattr(module, attr, None)
    if not inspect.isclass(cls):
        raise _unknown(name, where)
    if not (hasattr(cls, "fit") or hasattr(cls, "split")):
        raise ConfigError(f"{where}{path!r} is not an estimator, transformer or splitter (no fit or split method)")
    return cls


def class_path(obj_or_cls) -> str:
    """The public dotted path of a class: sklearn's private modules give way to the package
    that exports the class ("sklearn.cross_decomposition.PLSRegression", not "..._pls")."""
    cls = obj_or_cls if inspect.isclass(obj_or_cls) else type(obj_or_cls)
    parts = cls.__module__.split(".")
    if not any(p.startswith("_") for p in parts):
        return f"{cls.__module__}.{cls.__qualname__}"
    for k in range(1, len(parts) + 1):
        if parts[k - 1].startswith("_"):
            break
        module = importlib.import_module(".".join(parts[:k]))
        if getattr(module, cls.__name__, None) is cls:
            return f"{module.__name__}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def short_name(obj_or_cls) -> str:
    """The display name of a class: its registry short name, else its class name."""
    cls = obj_or_cls if inspect.isclass(obj_or_cls) else type(obj_or_cls)
    return _SHORT_BY_PATH.get(class_path(cls), cls.__name__)


def init_param_names(cls) -> set[str] | None:
    """Constructor parameter names (what get_params reports); None if it takes **kwargs."""
    getter = getattr(cls, "_get_param_names", None)
    if getter is not None:
        try:
            return set(getter())
        except RuntimeError:  # sklearn refuses *args constructors
            return None
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name != "self" and p.kind is not p.VAR_POSITIONAL}


def init_params(obj) -> dict:
    """An object's constructor parameters: get_params(deep=False), or by the signature for
    splitters (scikit-learn's have no get_params but keep each argument as an attribute)."""
    if hasattr(obj, "get_params"):
        return obj.get_params(deep=False)
    names = init_param_names(type(obj)) or set()
    return {n: getattr(obj, n) for n in sorted(names) if hasattr(obj, n)}


def explicit_params(obj) -> dict:
    """The parameters whose value differs from the constructor default."""
    defaults = {
        p.name: p.default for p in inspect.signature(type(obj).__init__).parameters.values() if p.name != "self"
    }
    current = init_params(obj)
    # Constructor order reads naturally in names: SavitzkyGolay(window_length=15, deriv=1).
    order = [n for n in defaults if n in current] + sorted(n for n in current if n not in defaults)
    out = {}
    for name in order:
        value = current[name]
        default = defaults.get(name, inspect.Parameter.empty)
        if default is inspect.Parameter.empty or not _same(value, default):
            out[name] = value
    return out


def _same(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return False
    if hasattr(a, "get_params") or hasattr(b, "get_params"):
        return False
    try:
        return bool(type(a) is type(b) and a == b)
    except Exception:
        return False


def to_json_safe(value):
    """A JSON-safe copy: numpy to lists and numbers, estimators and splitters to
    {"class": dotted path, "params": {...}}, tuples to lists, anything else to its repr."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(v) for v in value]
    if inspect.isclass(value) and (hasattr(value, "fit") or hasattr(value, "split")):
        return {"class": class_path(value), "params": {}}
    if hasattr(value, "get_params") or hasattr(value, "split"):
        return {"class": class_path(value), "params": to_json_safe(explicit_params(value))}
    return repr(value)
