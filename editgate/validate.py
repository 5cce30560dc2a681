"""Load and validate all inputs of a run (config, policy, manifests) before any model is loaded.

Problems from all three are collected and raised together, so one `editgate validate` lists every
error in the repository rather than the first.

`validate_paths` serves `editgate validate [PATH...]`; besides the errors it lists, as warnings, edits
that contradict each other (editgate/conflicts.py), each naming both edits' file:line:
- no paths: the current directory as a repository;
- a directory: a repository (its editgate.yaml, policy and manifests, exactly as `run` would load them);
- a file named editgate.yaml / editgate.yml: the repository it configures;
- any other file: a policy if it is a mapping with a `perplexity` or `benchmarks` key, or whose
  `edits` value is a mapping (thresholds, not a list of edits); otherwise a manifest.
  Explicit files are taken as the user names them (no repository-containment check: the user chose
  them on the command line); manifests take their default method from the editgate.yaml of the
  nearest enclosing directory that has one (else the built-in default), and ids must be unique
  across all manifests named together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from editgate.conflicts import conflict_warnings
from editgate.config import CONFIG_NAMES, Config, find_config_file, load_config_collecting
from editgate.errors import InputError, Problem
from editgate.manifests import Edit, ManifestCollector
from editgate.policy import Policy, load_policy_collecting, parse_policy
from editgate.yamlio import load_yaml
from editgate.methods import HPARAMS, layer_problems
from editgate.metrics.benchmarks import check_suite


def load_inputs(repo: Path, policy_override: str | None = None,
                lm_eval_include: str | None = None) -> tuple[Config, Policy, list[Edit]]:
    """Config, policy and edits of a repository; one InputError with every problem if any.

    `policy_override` (the CLI's --policy) is `builtin:<name>` or a file path relative to the
    current directory; being the operator's choice, it is not confined to the repository.
    `lm_eval_include` (--lm-eval-include) replaces EDITGATE_LM_EVAL_INCLUDE's directory, so the suite's
    lm-eval task names are checked against the directory the run will use.
    """
    config, policy, edits, problems = _load_repo(Path(repo), policy_override, lm_eval_include)
    if problems:
        raise InputError(problems)
    return config, policy, edits


def _load_repo(repo: Path, policy_override: str | None,
               lm_eval_include: str | None = None) -> tuple[Config, Policy, list[Edit], list[Problem]]:
    config, problems, bad = load_config_collecting(repo)
    if lm_eval_include is not None:
        config.lm_eval_include = lm_eval_include
    if "*" in bad and not config.root.is_dir():
        return config, Policy(), [], problems
    policy, policy_problems = _load_policy(config, policy_override, bad)
    problems += policy_problems
    if not policy_problems:
        problems += suite_problems(policy, config.root, config.lm_eval_include)
    edits: list[Edit] = []
    if "manifests" not in bad and "*" not in bad:
        paths, path_problems = config.manifest_paths_collecting()
        problems += path_problems
        collector = ManifestCollector()
        for path in paths:
            collector.add_file(path, path.relative_to(config.root).as_posix(), config.method)
        problems += collector.problems
        edits = collector.edits
    return config, policy, edits, problems


def _load_policy(config: Config, override: str | None, bad: set[str]) -> tuple[Policy, list[Problem]]:
    if override:
        if override.startswith("builtin:"):
            return load_policy_collecting(override, override, config.root)
        return load_policy_collecting(Path(override).expanduser(), override, config.root)
    if "policy" in bad or "*" in bad:  # already reported against editgate.yaml
        return Policy(), []
    try:
        path = config.policy_path()
    except InputError as e:
        return Policy(), e.problems
    return load_policy_collecting(path, config.policy_shown_as(), config.root)


def suite_problems(policy: Policy, root: Path, lm_eval_include: str | None = None) -> list[Problem]:
    """The benchmark suite's files, templates and datasets (lm-eval's task names), checked as the run will
    read them."""
    spec = policy.benchmarks.suite
    if spec in ("none", "off"):
        return []
    try:
        check_suite(spec, root, lm_eval_include)
    except InputError as error:
        return [Problem(policy.source, p.line, f"benchmarks.suite: {p.message}") if p.file == "<benchmarks.suite>"
                else p for p in error.problems]
    return []


def check_model_fit(config: Config, edits: list[Edit], depth: int) -> None:
    """What needs the loaded model's depth, checked before the first edit: layer hyperparameters."""
    problems: list[Problem] = []
    for method, values in config.hparams.items():
        hparams = HPARAMS[method]().updated(values)
        problems += [Problem(config.source_file or "editgate.yaml", config.key_lines.get("hparams"),
                             f"hparams.{method}: {m}") for m in layer_problems(method, hparams, depth)]
    for edit in edits:
        method = edit.method or config.method
        if edit.hparams:  # the layers this edit (or its manifest) sets; editgate.yaml's are checked above
            hparams = HPARAMS[method]().updated(edit.hparams)
            problems += [Problem(edit.source, edit.line, f"edit {edit.id!r}: {m}")
                         for m in layer_problems(method, hparams, depth)]
    if problems:
        raise InputError(_unique(problems))


@dataclass
class Validated:
    """What `validate_paths` checked, for the CLI's summary line."""

    repos: list[tuple[Config, Policy, list[Edit]]] = field(default_factory=list)
    policies: list[Policy] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)  # from manifests named explicitly
    manifest_files: int = 0
    warnings: list[Problem] = field(default_factory=list)  # edits that contradict each other (conflicts.py)

    @property
    def edit_count(self) -> int:
        return len(self.edits) + sum(len(edits) for _, _, edits in self.repos)


def validate_paths(paths: Sequence[Path | str], lm_eval_include: str | None = None) -> Validated:
    """Validate repositories, manifests and policies named on the command line (see module doc);
    `lm_eval_include` as for load_inputs."""
    result = Validated()
    problems: list[Problem] = []
    collector = ManifestCollector()
    for raw in paths or [Path(".")]:
        path = Path(raw)
        shown = str(raw)
        if path.is_dir() or (path.name in CONFIG_NAMES and path.is_file()):
            repo = path if path.is_dir() else path.parent
            config, policy, edits, repo_problems = _load_repo(repo, None, lm_eval_include)
            problems += repo_problems
            result.repos.append((config, policy, edits))
            continue
        try:
            data = load_yaml(path, shown)
        except InputError as e:
            problems += e.problems
            continue
        if is_policy_data(data):
            policy, policy_problems = parse_policy(data, shown)
            problems += policy_problems
            result.policies.append(policy)
            continue
        default_method, config_problems = _default_method_for(path)
        problems += config_problems
        collector.add_file(path, shown, default_method, data=data, loaded=True)
        result.manifest_files += 1
    problems += collector.problems
    result.edits = collector.edits
    if problems:
        raise InputError(_unique(problems))
    for edits in [edits for _, _, edits in result.repos] + [result.edits]:
        result.warnings += conflict_warnings(edits)
    result.warnings = _unique(result.warnings)
    return result


def is_policy_data(data: Any) -> bool:
    """A policy has `perplexity`/`benchmarks` sections or an `edits` *mapping* of thresholds;
    a manifest's `edits` is a list."""
    if not isinstance(data, dict):
        return False
    return "perplexity" in data or "benchmarks" in data or isinstance(data.get("edits"), dict)


def _default_method_for(path: Path) -> tuple[str, list[Problem]]:
    """The default method from the nearest enclosing editgate.yaml (its problems included)."""
    for directory in Path(path).resolve().parents:
        if find_config_file(directory) is not None:
            config, problems, _ = load_config_collecting(directory)
            return config.method, problems
    return Config(root=Path(".")).method, []


def _unique(problems: list[Problem]) -> list[Problem]:
    """The same config may be reached from several named files; report each problem once."""
    seen: set[Problem] = set()
    out = []
    for problem in problems:
        if problem not in seen:
            seen.add(problem)
            out.append(problem)
    return out
