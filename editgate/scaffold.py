"""`editgate init [DIR]`: scaffold a gated repository that passes `editgate validate` at once.

Writes editgate.yaml, one sample manifest (edits/<today>-example.yaml), the three packaged policies and
the GitHub Actions workflow. Existing files are never overwritten unless asked (--force); when any
would be, nothing is written and every one of them is listed. A symbolic link anywhere below DIR on
the way to a file (the file itself, or `.github`, say) is never written through, with or without
--force: it could point anywhere on the machine.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from editgate.atomicfile import write_atomic
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
    """Create the files; returns their paths. InputError (nothing written) when some already exist,
    a path goes through a symbolic link, or the directory cannot be created."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(Problem(str(directory), None, "exists and is not a directory"))
    files = plan(today)
    linked = sorted({link for relative in files for link in _links_on_the_way(directory, relative)})
    if linked:
        raise InputError([Problem(str(link), None, "is a symbolic link; editgate init never writes through one "
                                                   "(remove it, or choose another directory)") for link in linked])
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
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, Path(source).read_bytes())
        except OSError as error:
            raise InputError(Problem(str(target), None, f"cannot be written: {error.strerror or error}; "
                                                        "choose a directory you can write")) from None
        written.append(target)
    return written


def _links_on_the_way(directory: Path, relative: str) -> list[Path]:
    """Symbolic links among the existing paths from `directory` (exclusive) down to `relative`."""
    links, path = [], directory
    for part in Path(relative).parts:
        path = path / part
        if path.is_symlink():
            links.append(path)
        elif not path.exists():
            break
    return links
