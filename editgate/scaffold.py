"""`editgate init [DIR]`: scaffold a gated repository that passes `editgate validate` at once.

Writes editgate.yaml, one sample manifest (edits/<today>-example.yaml), the three packaged policies and
the GitHub Actions workflow. Existing files are never overwritten unless asked (--force); when any
would be, nothing is written and every one of them is listed.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from editgate.errors import InputError, Problem
from editgate.policy import BUILTIN_POLICIES, builtin_policy_path

TEMPLATES = Path(__file__).resolve().parent / "templates"
WORKFLOW = ".github/workflows/editgate.yml"


def template(name: str) -> Path:
    return TEMPLATES / name


def plan(today: dt.date | None = None) -> dict[str, Path]:
    """{path in the new repository: packaged source file}."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    files = {
        "editgate.yaml": template("editgate.yaml"),
        f"edits/{today.isoformat()}-example.yaml": template("example-edits.yaml"),
    }
    for name in BUILTIN_POLICIES:
        files[f"policies/{name}.yaml"] = builtin_policy_path(name)
    files[WORKFLOW] = template("editgate-workflow.yml")
    return files


def scaffold(directory: Path, force: bool = False, today: dt.date | None = None) -> list[Path]:
    """Create the files; returns their paths. InputError (nothing written) when some already exist."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(Problem(str(directory), None, "exists and is not a directory"))
    files = plan(today)
    if not force:
        existing = [relative for relative in files if (directory / relative).exists()]
        if (directory / "editgate.yml").exists():
            existing.append("editgate.yml")
        if existing:
            raise InputError([Problem(str(directory / relative), None, "already exists; nothing was written "
                                      "(use --force to overwrite)") for relative in existing])
    written = []
    for relative, source in files.items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        written.append(target)
    return written
