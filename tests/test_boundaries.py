"""The arrows between the packages (DESIGN.md: flows -> tasks -> (nirs, storage)):

* ``storage`` imports no Prefect, and of ``nirs`` only the replay rule (``nirs.replay``)
  and the trace contract (``nirs.trace``): both numpy only, so the store imports neither
  scikit-learn nor nirs' operators;
* ``tasks`` and ``flows`` use ``storage`` through its public names (``storage.__all__``),
  never its modules: what they need is exported, so the store's insides can change.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import storage

REPO = Path(__file__).resolve().parents[1]
RULE_AND_CONTRACT = {"nirs", "nirs.replay", "nirs.trace"}


def _loaded_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, cwd=REPO)
    return out.stdout.split()


def test_storage_imports_no_prefect_and_of_nirs_only_the_replay_rule_and_the_trace_contract():
    modules = _loaded_after("import importlib, pkgutil, storage\n"
                            "for m in pkgutil.iter_modules(storage.__path__):\n"
                            "    importlib.import_module('storage.' + m.name)")
    assert not [m for m in modules if m.split(".")[0] in {"prefect", "sklearn", "scipy", "tasks", "flows"}]
    assert {m for m in modules if m.split(".")[0] == "nirs"} <= RULE_AND_CONTRACT


def test_the_replay_rule_and_the_trace_contract_import_numpy_alone():
    modules = _loaded_after("import nirs.replay, nirs.trace")
    assert {m for m in modules if m.split(".")[0] == "nirs"} == RULE_AND_CONTRACT
    assert not [m for m in modules if m.split(".")[0] in {"sklearn", "scipy", "polars", "pyarrow", "duckdb"}]


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, [alias.name for alias in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno


def test_storage_source_names_no_nirs_module_but_the_rule_and_the_contract():
    found = [f"{path.name}:{line} {module}" for path in (REPO / "storage").glob("*.py")
             for module, names, line in _imports(path)
             if module.split(".")[0] == "nirs" and (module not in RULE_AND_CONTRACT
                                                     or module == "nirs" and set(names) - {"replay", "trace"})]
    assert not found, found


def test_tasks_and_flows_import_only_the_public_names_of_storage():
    public = set(storage.__all__)
    found = []
    for folder in ("tasks", "flows", "deployments"):
        for path in (REPO / folder).glob("*.py"):
            for module, names, line in _imports(path):
                if module.startswith("storage.") or (module == "storage" and set(names) - public):
                    found.append(f"{folder}/{path.name}:{line} {module} {names}")
    assert not found, found
