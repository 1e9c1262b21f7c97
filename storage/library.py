"""Reusable pipeline templates under ``library/templates/``.

Names are kept exactly as given. A file name is a readable slug of the name plus a
short hash of the exact name, so two names that differ only in case (or in characters
a file system cannot hold) never land in the same file, even on case-insensitive disks.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import portalocker

from .atomic import write_bytes
from .errors import InvalidInputError, NotFoundError

TEMPLATE_FORMAT_VERSION = 1


def template_filename(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] or "template"
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{slug.lower()}--{digest}.json"


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(f"template name must be a non-empty string, got {name!r}")
    if len(name) > 200 or any(ord(c) < 32 for c in name):
        raise InvalidInputError(f"template name {name!r} is too long or holds control characters")
    return name


class PipelineLibrary:
    def __init__(self, workspace: str | Path) -> None:
        self.workspace = Path(workspace)
        self.folder = self.workspace / "library" / "templates"

    def _path(self, name: str) -> Path:
        return self.folder / template_filename(_check_name(name))

    def save_template(self, pipeline_config: Any, name: str, category: str = "general",
                      description: str = "", tags: list[str] | None = None, *,
                      overwrite: bool = False) -> Path:
        """Save a config-only template; an existing name needs ``overwrite=True``."""
        path = self._path(name)
        stamp = datetime.now(timezone.utc).isoformat()
        document = {"format_version": TEMPLATE_FORMAT_VERSION, "name": name, "category": str(category),
                    "description": str(description), "tags": list(tags or []),
                    "created_at": stamp, "updated_at": stamp, "pipeline": pipeline_config}
        try:
            text = json.dumps(document, indent=2, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"template {name!r}: the pipeline config is not JSON-serialisable "
                                    f"({exc}); write steps as {{'class': ..., 'params': ...}}") from exc
        self.folder.mkdir(parents=True, exist_ok=True)
        # The existence check and the write are one step under a lock, so two processes
        # saving the same new name cannot both think they created it.
        with portalocker.Lock(self.folder / ".lock", mode="a", timeout=30):
            if path.exists():
                if not overwrite:
                    raise InvalidInputError(f"template {name!r} already exists in {self.folder}; "
                                            "pass overwrite=True to replace it")
                document["created_at"] = self._read(path).get("created_at", stamp)
                text = json.dumps(document, indent=2, allow_nan=False)
            write_bytes(path, text.encode())
        return path

    def load_template(self, name: str) -> Any:
        """The pipeline config saved under exactly this name."""
        return self.get_template(name)["pipeline"]

    def get_template(self, name: str) -> dict:
        path = self._path(name)
        if not path.exists():
            raise NotFoundError("template", name, self.folder)
        return self._read(path)

    def list_templates(self, category: str | None = None) -> list[dict]:
        """Templates (without their configs), sorted by name; filtered by category."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in sorted(self.folder.glob("*.json")):
            document = self._read(path)
            if category is None or document.get("category") == category:
                found.append({k: v for k, v in document.items() if k != "pipeline"} | {"path": str(path)})
        return sorted(found, key=lambda t: t["name"])

    def delete_template(self, name: str) -> None:
        path = self._path(name)
        if not path.exists():
            raise NotFoundError("template", name, self.folder)
        path.unlink()

    @staticmethod
    def _read(path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"template file {path} cannot be read: {exc}") from exc
