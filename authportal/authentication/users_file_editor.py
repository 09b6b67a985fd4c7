"""Writing the users file: comments and key order kept, and never a half-written or invalid file.

Used by `authportal users` and by the portal itself (a password change or reset). The new version is
written beside the file, fsynced, validated as the portal would read it, then renamed over the old one.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML


def round_trip_yaml() -> YAML:
    yaml = YAML()  # round-trip mode keeps comments and key order
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # a hash stays on its key's line instead of wrapping at 80 columns
    return yaml


def load_users_document(path: Path) -> Any:
    if not path.exists():
        return {"users": {}}
    document = round_trip_yaml().load(path.read_text()) or {}
    if "users" not in document or document["users"] is None:
        document["users"] = {}
    return document


def save_users_document(path: Path, document: Any, validate: Callable[[Path], object]) -> None:
    """Write beside the file, fsync, `validate` it as the portal reads it (it raises to refuse), then rename it
    over the file. Nothing is written when it raises."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w") as handle:
            round_trip_yaml().dump(document, handle)
            handle.flush()
            os.fsync(handle.fileno())
        validate(tmp)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
