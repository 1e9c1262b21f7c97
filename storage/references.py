"""How a person names a run, a pipeline or a chain: the full id, a unique prefix of it
(the first 8 hex digits, as git shortens commits), or, for a chain, ``DATASET:ALIAS``
(``tablet1:production``). One resolver for every command and every caller, so that an
id shown anywhere is accepted everywhere.

Also the rule of promotion: an alias moves only to a chain trained on that alias's
dataset, so a typo in the dataset name (``wheet``) cannot create an alias nobody scores
with. ``force`` overrides it, for a chain meant to serve another dataset (the same
instrument and property under another name).
"""

from __future__ import annotations

import re

from .errors import InvalidInputError, NotFoundError

#: Digits shown for an id (``4e9b2fbd``): the first block of a uuid4, 32 random bits.
SHORT = 8
#: The fewest digits accepted as a prefix; fewer would match half the workspace.
MIN_PREFIX = 4
_PREFIX = re.compile(r"^[0-9a-fA-F-]+$")
_TABLES = {"run": ("runs", "run_id"), "pipeline": ("pipelines", "pipeline_id"), "chain": ("chains", "chain_id")}


def short_id(value: str | None) -> str:
    """The first 8 hex digits of an id (what tables and names show)."""
    return "" if value is None else str(value)[:SHORT]


class AmbiguousIdError(InvalidInputError):
    """A prefix matches more than one id; the message lists them."""


def _matches(store, kind: str, ref: str, limit: int = 11) -> list[str]:
    """The ids of `kind` equal to `ref`, or else starting with it (at most `limit`)."""
    table, key = _TABLES[kind]
    exact = store.sql(f"SELECT {key} FROM {table} WHERE {key} = ?", [ref])[key].to_list()
    if exact or len(ref) < MIN_PREFIX or not _PREFIX.match(ref):
        return exact
    return store.sql(f"SELECT {key} FROM {table} WHERE starts_with({key}, ?) ORDER BY {key} LIMIT {int(limit)}",
                     [ref.lower()])[key].to_list()


def resolve_id(store, ref: str, kinds: tuple[str, ...] = ("chain",)) -> tuple[str, str]:
    """``(kind, full id)`` for ``ref``: an id of one of ``kinds`` or a unique prefix of
    one (at least 4 hex digits). ``NotFoundError`` when nothing matches,
    ``AmbiguousIdError`` (listing them) when several do."""
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidInputError(f"an id must be a non-empty string, got {ref!r}")
    ref = ref.strip()
    found: list[tuple[str, str]] = []
    for kind in kinds:
        matches = _matches(store, kind, ref)
        if ref in matches:
            return kind, ref
        found += [(kind, m) for m in matches]
    if len(found) == 1:
        return found[0]
    what = "/".join(kinds)
    if found:
        shown = ", ".join(f"{k} {i}" for k, i in found[:10]) + (" and more" if len(found) > 10 else "")
        raise AmbiguousIdError(f"{ref!r} is the start of more than one {what} id: {shown}; give more digits")
    raise NotFoundError(what, ref, store.path)


def resolve_chain(store, ref: str) -> str:
    """The chain id that ``ref`` names: a chain id, a unique prefix of one, or
    ``DATASET:ALIAS`` (the chain the alias points at now)."""
    if isinstance(ref, str) and ":" in ref:
        dataset, alias = ref.split(":", 1)
        if not dataset or not alias:
            raise InvalidInputError(f"{ref!r}: write DATASET:ALIAS, e.g. tablet1:production")
        return store.get_alias(dataset, alias)
    return resolve_id(store, ref, ("chain",))[1]


def chain_datasets(store, chain_id: str) -> list[str]:
    """The dataset a chain was trained on (its pipeline's), as a list: empty for a
    chain whose pipeline names none (an imported bundle of unknown origin)."""
    frame = store.sql("SELECT p.dataset_name FROM chains c JOIN pipelines p USING (pipeline_id) "
                      "WHERE c.chain_id = ?", [chain_id])
    if frame.is_empty():
        raise NotFoundError("chain", chain_id, store.path)
    return [name for name in frame["dataset_name"].to_list() if name]


def check_promotion(store, dataset_name: str, chain_id: str) -> None:
    """Refuse to point ``dataset_name``'s alias at a chain trained on another dataset."""
    trained_on = chain_datasets(store, chain_id)
    if trained_on and dataset_name not in trained_on:
        known = store.sql("SELECT DISTINCT dataset_name FROM pipelines WHERE dataset_name <> '' "
                          "ORDER BY dataset_name")["dataset_name"].to_list()
        raise InvalidInputError(
            f"chain {short_id(chain_id)} was trained on dataset {trained_on[0]!r}, not {dataset_name!r}"
            + ("" if dataset_name in known else f" (no dataset {dataset_name!r} in this workspace; "
               f"its datasets: {', '.join(known) or 'none'})")
            + "; promote it for its own dataset, or pass force=True (--force) to use it for another")
