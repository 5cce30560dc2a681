"""Where names from a repository may point: one rule for files, one for `hf:` datasets.

Files (`editgate.yaml`'s manifests and policy, a policy's corpus, a suite's task and data files, a
model directory given as a relative path) are read from the repository and nowhere else. A path is
taken as written, relative to the repository (or, for files a task names, to the task file), `~` is
not expanded (the repository does not know whose home it runs in), and the resolved path, links
followed, must lie inside the repository. Validation and the run use the same function, so what
`validate` accepts is exactly what the run reads.

`hf:<dataset>[:<config>]:<split>` names a dataset already in the local datasets cache by its hub id.
An id is `name` or `owner/name` of letters, digits, `-`, `_` and `.`; anything that looks like a path,
names a local directory, or names one of the `datasets` builders that read arbitrary local files
(json, csv, text, ...) is refused, so `hf:` cannot be a way around the file rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


class PathError(ValueError):
    """A repository path or dataset name editgate will not read; the message ends with the fix."""


def path_inside(root: Path, relative: str, base: Path | None = None) -> Path | None:
    """`relative` resolved against `base` (default: the root), or None when it leaves `root`.

    `~` is not expanded: `~/.bashrc` is a file named `~` ... inside the repository, and so missing.
    """
    top = Path(root).resolve()
    candidate = Path(relative)
    full = (candidate if candidate.is_absolute() else (base or top) / candidate).resolve()
    if full == top or top in full.parents:
        return full
    return None


def repository_file(root: Path, relative: str, what: str = "", base: Path | None = None) -> Path:
    """An existing regular file inside the repository, or PathError saying what is wrong and the fix."""
    what = f"{what} " if what else ""
    if relative.startswith("~"):
        raise PathError(f"{what}{relative!r} starts with '~'; paths are relative to the repository "
                        "(home directories are not read)")
    full = path_inside(root, relative, base)
    if full is None:
        raise PathError(f"{what}{relative!r} is outside the repository; use a path inside it")
    if not full.exists():
        raise PathError(f"{what}{relative!r} does not exist")
    if not full.is_file():
        raise PathError(f"{what}{relative!r} is not a regular file")
    return full


def named_file(root: Path | None, relative: str, what: str = "", base: Path | None = None) -> Path:
    """`repository_file` for a repository; with no repository (a file the operator named on the command
    line), the path as the operator wrote it, `~` expanded, relative to `base` or the working directory."""
    if root is not None:
        return repository_file(root, relative, what, base)
    path = Path(relative).expanduser()
    full = (path if path.is_absolute() else (base or Path.cwd()) / path).resolve()
    if not full.is_file():
        raise PathError(f"{what + ' ' if what else ''}{relative!r} does not exist")
    return full


# --- hf: dataset names --------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
# `datasets`' packaged builders: they read whatever local files data_files/data_dir name
FILE_BUILDERS = frozenset({
    "json", "csv", "text", "parquet", "arrow", "pandas", "sql", "generator", "xml", "imagefolder",
    "audiofolder", "videofolder", "webdataset", "spark", "cache", "folder_based_builder", "hdf5",
    "pdffolder", "niftifolder", "eval", "lance",
})


@dataclass(frozen=True)
class HfSpec:
    name: str
    config: str | None
    split: str


def parse_hf(spec: str) -> HfSpec:
    """`hf:<dataset>[:<config>]:<split>` checked as above; PathError with the fix otherwise."""
    parts = spec.removeprefix("hf:").split(":")
    if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
        raise PathError(f"{spec!r}: write hf:<dataset>:<split> or hf:<dataset>:<config>:<split>")
    name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    if not _HUB_ID.match(name) or ".." in name:
        raise PathError(f"{spec!r}: {name!r} is not a dataset id (owner/name); hf: reads the local "
                        "datasets cache, never files: put a file in the repository and name its path instead")
    if name.lower() in FILE_BUILDERS:
        raise PathError(f"{spec!r}: the {name!r} builder reads local files; name a file in the repository instead")
    if Path(name).exists():
        raise PathError(f"{spec!r}: {name!r} is also a local path, which `datasets` would read instead of "
                        "the cached dataset; name a file in the repository instead")
    for label, value in (("config", config), ("split", split)):
        if value is not None and not re.match(r"^[A-Za-z0-9_.\[\]%+-]+$", value):
            raise PathError(f"{spec!r}: the {label} {value!r} has characters a {label} name cannot have")
    return HfSpec(name, config, split)


def load_hf_dataset(spec: HfSpec):
    """The dataset from the local cache; no loading script ever runs (they are repository code)."""
    import datasets

    return datasets.load_dataset(spec.name, spec.config, split=spec.split)
