"""Generator keywords in configs: `_or_` (alternatives) and `_range_` (numeric sweeps).

They may stand anywhere a step or a parameter value goes, nested as deep as wanted, as in
nirs4all:

* ``{"_or_": [a, b, c]}`` - one variant per alternative; an alternative may itself hold
  generators, so the count is the sum of the alternatives' counts.
* ``{"_range_": [start, stop]}``, ``[start, stop, step]`` or
  ``{"from": start, "to": stop, "step": step}`` - the stop is included (nirs4all's rule):
  ``[2, 10, 4]`` gives 2, 6, 10.

Every other dict or list multiplies the counts of its members. `count` works on the tree
without expanding it, so a config that would generate millions of pipelines is refused in
microseconds. The pick/count/size modifiers of nirs4all are not supported.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

from nirs.errors import ConfigError

OR = "_or_"
RANGE = "_range_"
KEYWORDS = (OR, RANGE)


def is_generator(node) -> bool:
    return isinstance(node, dict) and any(k in node for k in KEYWORDS)


def _generator_key(node: dict, path: str) -> str:
    keys = [k for k in KEYWORDS if k in node]
    extra = sorted(set(node) - set(keys))
    if len(keys) > 1 or extra:
        raise ConfigError(
            f"{path}: a generator takes exactly one key ({' or '.join(KEYWORDS)}); found {sorted(node)}"
            + (" (pick/count/size are not supported)" if extra else "")
        )
    return keys[0]


def range_values(spec, path: str) -> list:
    """The values of a `_range_` spec; the stop is included when the steps land on it."""
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - {"from", "to", "step"})
        if unknown or "from" not in spec or "to" not in spec:
            raise ConfigError(f"{path}: _range_ as a dict needs 'from' and 'to' (and optional 'step'); found {sorted(spec)}")
        start, stop, step = spec["from"], spec["to"], spec.get("step", 1)
    elif isinstance(spec, (list, tuple)) and len(spec) in (2, 3):
        start, stop, step = (*spec, 1) if len(spec) == 2 else spec
    else:
        raise ConfigError(f"{path}: _range_ must be [start, stop], [start, stop, step] or a from/to/step dict; got {spec!r}")
    for label, v in (("start", start), ("stop", stop), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{path}: _range_ {label} must be a number, got {v!r}")
    if step == 0:
        raise ConfigError(f"{path}: _range_ step must not be 0")
    # A small tolerance lets float steps land on an inclusive stop (0.1 * 3 != 0.3).
    n = math.floor((stop - start) / step + 1e-9) + 1
    if n <= 0:
        raise ConfigError(f"{path}: _range_ from {start} to {stop} by {step} gives no values")
    if all(isinstance(v, int) for v in (start, stop, step)):
        return [start + i * step for i in range(n)]
    return [round(start + i * step, 12) for i in range(n)]


def count(node, path: str = "config") -> int:
    """How many variants `node` expands to, computed without expanding."""
    if isinstance(node, dict):
        if is_generator(node):
            key = _generator_key(node, path)
            if key == RANGE:
                return len(range_values(node[RANGE], path))
            choices = node[OR]
            if not isinstance(choices, (list, tuple)) or not choices:
                raise ConfigError(f"{path}: _or_ needs a non-empty list of alternatives, got {choices!r}")
            return sum(count(c, f"{path}._or_[{i}]") for i, c in enumerate(choices))
        return math.prod(count(v, f"{path}.{k}") for k, v in node.items())
    if isinstance(node, (list, tuple)):
        return math.prod(count(v, f"{path}[{i}]") for i, v in enumerate(node))
    return 1


def expand(node, path: str = "config") -> Iterator[tuple[object, list[dict]]]:
    """Every variant of `node`, with the generator choices that made it.

    A choice is {"path": where in the config, "keyword": "_or_" | "_range_", "index": which
    alternative or value, "value": the chosen value}; values are the raw (possibly
    non-JSON) objects, the caller makes them JSON-safe.
    """
    if isinstance(node, dict):
        if is_generator(node):
            key = _generator_key(node, path)
            if key == RANGE:
                for i, v in enumerate(range_values(node[RANGE], path)):
                    yield v, [{"path": path, "keyword": RANGE, "index": i, "value": v}]
                return
            if not isinstance(node[OR], (list, tuple)) or not node[OR]:
                raise ConfigError(f"{path}: _or_ needs a non-empty list of alternatives, got {node[OR]!r}")
            for i, alt in enumerate(node[OR]):
                for v, sub in expand(alt, f"{path}._or_[{i}]"):
                    yield v, [{"path": path, "keyword": OR, "index": i, "value": alt}, *sub]
            return
        keys = list(node)
        parts = [list(expand(node[k], f"{path}.{k}")) for k in keys]
        for combo in itertools.product(*parts):
            yield dict(zip(keys, (v for v, _ in combo))), [c for _, chs in combo for c in chs]
        return
    if isinstance(node, (list, tuple)):
        parts = [list(expand(v, f"{path}[{i}]")) for i, v in enumerate(node)]
        for combo in itertools.product(*parts):
            yield [v for v, _ in combo], [c for _, chs in combo for c in chs]
        return
    yield node, []
