"""The repository's `editgate.yaml`: which model, method, manifests and policy a run uses.

Every key is optional (an absent file means all defaults, which run offline on the embedded model).
The file can be changed by a pull request, so it decides nothing that belongs to the runner: paths it
names stay inside the repository (editgate/paths.py), counts are bounded by what the runner has, and
whether remote code may run, where the shared cache lives and where lm-eval task files come from are set
only by the runner's owner (`--trust-remote-code` / `EDITGATE_TRUST_REMOTE_CODE=1`, `--cache-dir` /
`EDITGATE_CACHE_DIR`, `--lm-eval-include` / `EDITGATE_LM_EVAL_INCLUDE`).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editgate.errors import InputError, Problem
from editgate.globbing import MAX_WALK_ENTRIES, PatternError, check_pattern, find, relative_pattern
from editgate.limits import MAX_SEED, MAX_THREADS
from editgate.methods import check_hparams, method_names
from editgate.paths import path_inside
from editgate.policy import BUILTIN_POLICIES, builtin_policy_path
from editgate.safetext import has_control
from editgate.yamlio import (
    describe, did_you_mean, line_of, line_of_mentioned, load_yaml, plain, quote_hint, unknown_key,
)

CONFIG_NAMES = ("editgate.yaml", "editgate.yml")
DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|multi)$")
DEFAULT_POLICY = "policies/default.yaml"
DEFAULT_CACHE_DIR = "~/.cache/editgate"
CACHE_ENV = "EDITGATE_CACHE_DIR"
REMOTE_CODE_ENV = "EDITGATE_TRUST_REMOTE_CODE"
LM_EVAL_INCLUDE_ENV = "EDITGATE_LM_EVAL_INCLUDE"
# what only the runner's owner may set; the message says how
RUNNER_KEYS = {
    "trust_remote_code": "running the model repository's code is the runner owner's decision, never a pull "
                         "request's: remove it here; the workflow may pass --trust-remote-code or set "
                         f"{REMOTE_CODE_ENV}=1",
    "cache_dir": "the cache is shared by every job on the runner, so its place is the runner's: remove it here; "
                 f"pass --cache-dir or set {CACHE_ENV} (default {DEFAULT_CACHE_DIR})",
    "lm_eval_include": "lm-eval task files can run code, so only the runner's owner may add them: remove it here; "
                       f"the workflow may pass --lm-eval-include DIR or set {LM_EVAL_INCLUDE_ENV}=DIR (a "
                       "directory outside the repository)",
}


def runner_cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR


def runner_trusts_remote_code() -> bool:
    return os.environ.get(REMOTE_CODE_ENV, "").strip().lower() in ("1", "true", "yes")


def runner_lm_eval_include() -> str | None:
    return os.environ.get(LM_EVAL_INCLUDE_ENV) or None


@dataclass
class Config:
    """Settings for one repository. `root` is the repository directory (absolute)."""

    root: Path
    model: str = "builtin:smollm2-135m"
    dtype: str = "auto"
    device: str = "auto"
    method: str = "rome"
    hparams: dict[str, dict] = field(default_factory=dict)
    manifests: list[str] = field(default_factory=lambda: ["edits/**/*.yaml"])
    policy: str = DEFAULT_POLICY
    cache_dir: str = field(default_factory=runner_cache_dir)  # the runner's (see RUNNER_KEYS)
    trust_remote_code: bool = field(default_factory=runner_trusts_remote_code)  # the runner's
    lm_eval_include: str | None = field(default_factory=runner_lm_eval_include)  # the runner's
    threads: int | None = None
    seed: int = 0
    source_file: str | None = None  # "editgate.yaml" as shown to users, or None when absent
    policy_explicit: bool = field(default=False, repr=False, compare=False)  # the file set `policy:`
    key_lines: dict[str, int] = field(default_factory=dict, repr=False, compare=False)  # for messages

    def manifest_paths(self) -> list[Path]:
        """Files matched by the manifest globs, sorted by path, de-duplicated, inside the root.

        Raises InputError when a pattern leaves the repository, matches nothing, or a match is a
        symlink pointing outside the repository.
        """
        paths, problems = self.manifest_paths_collecting()
        if problems:
            raise InputError(problems)
        return paths

    def manifest_paths_collecting(self) -> tuple[list[Path], list[Problem]]:
        problems: list[Problem] = []
        found: dict[str, Path] = {}
        shown = self.source_file or str(self.root)  # no editgate.yaml: the problem is the repository's
        line = self.key_lines.get("manifests")
        for pattern in self.manifests:
            relative = relative_pattern(self.root, pattern)
            if relative is None:
                problems.append(Problem(shown, line, f"manifests: {pattern!r} is outside the repository"))
                continue
            found_files = find(self.root, relative)
            if found_files.truncated:
                problems.append(Problem(shown, line, f"manifests: {pattern!r} searches too many files (more than "
                                                     f"{MAX_WALK_ENTRIES:,}); start it with a directory"))
            matches = found_files.files
            if not matches:
                where = "" if "manifests" in self.key_lines else " (the default; set 'manifests:' in editgate.yaml)"
                problems.append(Problem(shown, line, f"manifests: no file matches {pattern!r}{where}"))
            for match in matches:
                problem = _manifest_file_problem(self.root, match)
                if problem is not None:
                    problems.append(problem)
                    continue
                found.setdefault(match, self.root / match)
        return [found[k] for k in sorted(found)], problems

    def model_spec(self) -> str:
        """The model to load: a relative path means a path inside the repository (when it exists there),
        an absolute path a directory on the runner, anything else a builtin name or a hub id."""
        if self.model.startswith("builtin:") or Path(self.model).is_absolute():
            return self.model
        inside = path_inside(self.root, self.model)
        if inside is not None and (self.root / self.model).exists():
            return str(inside)
        return self.model

    def policy_path(self) -> Path:
        """The policy file: a packaged one for `builtin:<name>`, else inside the repository.

        When `policy:` is not set and `policies/default.yaml` does not exist, the packaged default.
        """
        if self.policy.startswith("builtin:"):
            return builtin_policy_path(self.policy.removeprefix("builtin:"))
        path = path_inside(self.root, self.policy)
        if path is None:
            raise InputError(Problem(self.source_file or "editgate.yaml", self.key_lines.get("policy"),
                                     f"policy {self.policy!r} is outside the repository"))
        if not self.policy_explicit and not path.exists():
            return builtin_policy_path("default")
        return path

    def policy_shown_as(self) -> str:
        """How the policy is named in messages: the repository-relative path or `builtin:<name>`."""
        if self.policy.startswith("builtin:"):
            return self.policy
        if not self.policy_explicit and not (self.root / self.policy).exists():
            return "builtin:default"
        return self.policy

    def cache_path(self) -> Path:
        """The runner's cache directory, with ~ expanded (relative: to the working directory)."""
        return Path(self.cache_dir).expanduser().absolute()


def load_config(repo: Path) -> Config:
    """Read and validate `<repo>/editgate.yaml`; raise InputError listing every problem."""
    config, problems, _ = load_config_collecting(repo)
    if problems:
        raise InputError(problems)
    return config


def find_config_file(repo: Path) -> Path | None:
    """The config file's path when one exists under either name (whatever kind of file it is)."""
    for name in CONFIG_NAMES:
        if os.path.lexists(repo / name):
            return repo / name
    return None


def _config_file_problem(root: Path) -> Problem | None:
    """Two config files, or one that is not a readable regular file: never silently "no config"."""
    present = [name for name in CONFIG_NAMES if os.path.lexists(root / name)]
    if len(present) > 1:
        return Problem(present[1], None, f"both {' and '.join(present)} exist and only one is read; keep one")
    if not present:
        return None
    path = root / present[0]
    if path.is_symlink() and not path.exists():
        return Problem(present[0], None, "is a link to a file that does not exist")
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return Problem(present[0], None, f"cannot be read: {error.strerror or error}")
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        return Problem(present[0], None, f"is {kind}; editgate.yaml must be a YAML file")
    return None


def load_config_collecting(repo: Path) -> tuple[Config, list[Problem], set[str]]:
    """The config with invalid values replaced by defaults, the problems, and the invalid keys
    (so callers can skip work that depends on them, e.g. expanding a broken `manifests`)."""
    root = Path(repo).expanduser().resolve()
    config = Config(root=root)
    if not root.is_dir():
        return config, [Problem(str(repo), None, "the repository directory does not exist")], {"*"}
    path = find_config_file(root)
    if path is None:
        return config, [], set()
    config.source_file = path.name
    problem = _config_file_problem(root)
    if problem is not None:
        return config, [problem], {"*"}
    if path_inside(root, path.name) is None:
        return config, [Problem(path.name, None, "is a link to a file outside the repository")], {"*"}
    try:
        data = load_yaml(path, path.name)
    except InputError as e:
        return config, e.problems, {"*"}
    problems: list[Problem] = []
    bad: set[str] = set()
    if data is None:
        return config, problems, bad
    if not isinstance(data, dict):
        message = f"must be a mapping of settings, not {describe(data)}"
        return config, [Problem(path.name, line_of(data), message)], {"*"}
    _apply(config, data, path.name, problems, bad)
    return config, problems, bad


_KEYS = ["model", "dtype", "device", "method", "hparams", "manifests", "policy", "threads", "seed"]


def _apply(config: Config, data: dict, shown: str, problems: list[Problem], bad: set[str]) -> None:
    config.key_lines = {k: v for k, v in data.key_lines.items() if isinstance(k, str)} \
        if hasattr(data, "key_lines") else {}
    for key, value in data.items():
        line = line_of(data, key)
        if key in RUNNER_KEYS:
            problems.append(Problem(shown, line, f"{key}: {RUNNER_KEYS[key]}"))
            bad.add(key)
            continue
        if key not in _KEYS:
            problems.append(Problem(shown, line, unknown_key("setting", key, _KEYS)))
            continue
        message, parsed = _CHECKS[key](config, value)
        if message:
            hint = quote_hint(data, key, value) if key in _TEXT_KEYS else ""
            problems.append(Problem(shown, line, f"{key}: {message}{hint}"))
            bad.add(key)
            continue
        setattr(config, key, parsed)
        if key == "policy":
            config.policy_explicit = True
    if "hparams" not in bad and "method" not in bad:
        _check_all_hparams(config, data, shown, problems)


_TEXT_KEYS = {"model", "dtype", "device", "method", "policy"}


def _text(value: Any) -> tuple[str | None, Any]:
    if not isinstance(value, str) or not value.strip():
        return f"must be text, not {describe(value)}", None
    return None, value.strip()


def _choice(options: tuple[str, ...]) -> Any:
    def check(config: Config, value: Any) -> tuple[str | None, Any]:
        message, text = _text(value)
        if message or text in options:
            return message, text
        return f"{text!r} is not one of {', '.join(options)}{did_you_mean(text, options)}", None
    return check


def _device(config: Config, value: Any) -> tuple[str | None, Any]:
    message, text = _text(value)
    if message or _DEVICE.match(text):
        return message, text
    return f"{text!r} is not a device; use auto, cpu, cuda, cuda:N or multi", None


def _method(config: Config, value: Any) -> tuple[str | None, Any]:
    message, text = _text(value)
    if message or text in method_names():
        return message, text
    choices = ", ".join(method_names())
    return f"unknown method {text!r}{did_you_mean(text, method_names())}; choose one of {choices}", None


MAX_PATTERNS = 64


def _manifests(config: Config, value: Any) -> tuple[str | None, Any]:
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p.strip() for p in patterns):
        return f"must be a glob or a list of globs, not {describe(value)}", None
    if len(patterns) > MAX_PATTERNS:
        return f"at most {MAX_PATTERNS} globs; use fewer, wider ones", None
    for pattern in patterns:
        if has_control(pattern):
            return f"{pattern!r} contains a control character; remove it", None
        try:
            check_pattern(pattern)
        except PatternError as error:
            return f"{pattern[:60]!r}... {error}", None
        if relative_pattern(config.root, pattern) is None:
            return f"{pattern!r} is outside the repository; use a path relative to it, without '..'", None
    return None, [p.strip() for p in patterns]


def _manifest_file_problem(root: Path, relative: str) -> Problem | None:
    """A matched manifest must be a file inside the repository with a printable name."""
    if has_control(relative):
        return Problem(repr(relative), None, "a manifest's file name contains a control character "
                                             "(a line break, say); rename the file")
    if path_inside(root, relative) is None:
        return Problem(relative, None, "is a link to a file outside the repository")
    if not (root / relative).is_file():
        return Problem(relative, None, "is a link to a file that does not exist")
    return None


def _policy(config: Config, value: Any) -> tuple[str | None, Any]:
    message, text = _text(value)
    if message:
        return message, None
    if text.startswith("builtin:"):
        name = text.removeprefix("builtin:")
        if name not in BUILTIN_POLICIES:
            return f"{unknown_key('builtin policy', name, BUILTIN_POLICIES)}", None
        return None, text
    path = path_inside(config.root, text)
    if path is None:
        return f"{text!r} is outside the repository; use a path inside it or builtin:<name>", None
    if not path.is_file():
        return f"{text!r} does not exist (or use builtin:{', builtin:'.join(BUILTIN_POLICIES)})", None
    return None, text


def _int(minimum: int, maximum: Any, allow_none: bool) -> Any:
    """A whole number in [minimum, maximum()]; the maximum is a function (the runner's core count)."""
    def check(config: Config, value: Any) -> tuple[str | None, Any]:
        if value is None and allow_none:
            return None, None
        top = maximum()
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= top:
            extra = " or empty (automatic)" if allow_none else ""
            return f"must be a whole number from {minimum} to {top}{extra}, not {describe(value)}", None
        return None, value
    return check


def _model(config: Config, value: Any) -> tuple[str | None, Any]:
    message, text = _text(value)
    if message:
        return message, None
    if text.startswith("~"):
        return (f"{text!r} starts with '~'; a path here is relative to the repository, or absolute "
                "for a directory on the runner"), None
    if has_control(text):
        return f"{text!r} contains a control character; remove it", None
    if not Path(text).is_absolute() and not text.startswith("builtin:") and path_inside(config.root, text) is None:
        return f"{text!r} is outside the repository; use a path inside it, an absolute path or a model id", None
    return None, text


def _hparams(config: Config, value: Any) -> tuple[str | None, Any]:
    if value is None:
        return None, {}
    if not isinstance(value, dict) or not all(isinstance(v, dict) or v is None for v in value.values()):
        return "must map method names to their hyperparameters, e.g. {rome: {layer: 4}}", None
    return None, value


_CHECKS = {
    "model": _model,
    "dtype": _choice(DTYPES),
    "device": _device,
    "method": _method,
    "hparams": _hparams,
    "manifests": _manifests,
    "policy": _policy,
    "threads": _int(1, lambda: MAX_THREADS, allow_none=True),  # and at most the runner's cores (models.set_threads)
    "seed": _int(0, lambda: MAX_SEED, allow_none=False),
}


def _check_all_hparams(config: Config, data: dict, shown: str, problems: list[Problem]) -> None:
    """Per-method defaults: unknown methods and unknown or mistyped hyperparameters."""
    section = data.get("hparams") or {}
    checked: dict[str, dict] = {}
    for method, values in section.items():
        line = line_of(section, method)
        if method not in method_names():
            problems.append(Problem(shown, line, f"hparams: {unknown_key('method', method, method_names())}"))
            continue
        values = plain(values or {})
        for message in check_hparams(method, values):
            key_line = line_of_mentioned(section[method], message) or line
            problems.append(Problem(shown, key_line, f"hparams.{method}: {message}"))
        checked[method] = values
    config.hparams = checked
