"""Where a task's input comes from: the file and mapping shown in file:line errors, the directory its
relative paths start from, and the repository they must stay inside."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editgate.errors import InputError, Problem
from editgate.paths import PathError, named_file
from editgate.yamlio import line_of

PACKAGED_TASKS = Path(__file__).resolve().parent.parent.parent / "tasks"


@dataclass
class Where:
    """A task's source (file shown to the user) and its mapping, for file:line errors; `included`: the
    task file an `include:` took the mapping's other keys from, where errors about those keys point."""

    file: str
    data: Any
    included: "Where | None" = None

    def error(self, key: str | None, message: str) -> InputError:
        if (self.included is not None and key is not None and isinstance(self.data, dict) and key not in self.data
                and isinstance(self.included.data, dict) and key in self.included.data):
            return self.included.error(key, message)
        return InputError(Problem(self.file, line_of(self.data, key), message))


@dataclass
class TaskDef:
    """A task's mapping as read from a suite or task file, not yet checked."""

    data: Any
    where: Where
    base: Path  # the directory relative paths start from
    root: Path | None


def inside(relative: str, root: Path | None, base: Path | None, shown: str, where: Where | None,
           key: str | None = None) -> Path:
    """`relative` resolved against `base` (else `root`), kept inside `root` (editgate/paths.py)."""
    try:
        return named_file(root, relative, base=base)
    except PathError as error:
        raise (where.error(key, str(error)) if where else InputError(Problem(shown, None, str(error)))) from None


def shown_path(path: Path, root: Path | None) -> str:
    """A task file as the user knows it: relative to the repository (or the package's tasks)."""
    if root is not None:
        try:
            relative = path.relative_to(root.resolve()).as_posix()
            return relative if root.resolve() != PACKAGED_TASKS else f"editgate/tasks/{relative}"
        except ValueError:
            pass
    return str(path)
