"""GitHub Actions integration, active when `GITHUB_ACTIONS=true`:

- `::error file=...,line=...,title=...::message` annotations on the offending manifest lines (the
  culprit first, then other failed edits, then invalid input); at most ten, the rest listed in the job
  summary. Paths are relative to the git repository root, as GitHub needs them.
- report.md appended to `$GITHUB_STEP_SUMMARY`;
- `verdict`, `culprit` and `report` (the path of report.md) written to `$GITHUB_OUTPUT`;
- the run's log folded into a `::group::`, with workflow commands stopped inside it, so text from a
  manifest (a pull request's content) echoed in the log cannot act as a workflow command.

Escaping follows the runner's rules: in messages % -> %25, CR -> %0D, LF -> %0A; in properties also
: -> %3A and , -> %2C.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

MAX_ANNOTATIONS = 10


def active(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get("GITHUB_ACTIONS") == "true"


def escape_data(text: Any) -> str:
    return str(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: Any) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(name: str, message: Any, **properties: Any) -> str:
    props = ",".join(f"{key}={escape_property(value)}" for key, value in properties.items() if value not in (None, ""))
    return f"::{name}{' ' + props if props else ''}::{escape_data(message)}"


# --- annotations ------------------------------------------------------------------------------------


def annotation_path(doc: dict[str, Any], file: str | None, env: Mapping[str, str] | None = None,
                    repo_dir: Path | None = None) -> str | None:
    """A manifest path (relative to the gated directory) as a path from the git repository root.

    The gated directory's place comes from the report's `repository.path` (git); without git, from
    GITHUB_WORKSPACE and the working directory. Files that are not repository paths get none.
    """
    if not file or file.startswith(("<", "-")) or os.path.isabs(file) or ".." in PurePosixPath(file).parts:
        return None
    repository = doc.get("repository")
    if repository is not None:
        prefix = repository.get("path") or ""
    else:
        prefix = _prefix_from_workspace(repo_dir, env)
    return (PurePosixPath(prefix) / file).as_posix() if prefix else file


def _prefix_from_workspace(repo_dir: Path | None, env: Mapping[str, str] | None) -> str:
    """The gated directory (--repo) relative to GITHUB_WORKSPACE, for runs outside a git work tree."""
    env = os.environ if env is None else env
    workspace = env.get("GITHUB_WORKSPACE")
    if not workspace or not repo_dir:
        return ""
    try:
        relative = Path(repo_dir).resolve().relative_to(Path(workspace).resolve())
    except ValueError:
        return ""
    return "" if str(relative) == "." else relative.as_posix()


def annotations(doc: dict[str, Any], env: Mapping[str, str] | None = None,
                repo_dir: Path | None = None) -> list[dict[str, Any]]:
    """Every annotation the report calls for, most important first: {file, line, title, message}."""
    out: list[dict[str, Any]] = []
    culprit = doc.get("culprit")
    edits = doc.get("edits") or []
    fail_ratio = ((doc.get("policy") or {}).get("perplexity") or {}).get("fail_ratio")
    ordered = sorted(edits, key=lambda e: 0 if culprit and e.get("id") == culprit.get("id") else 1)
    for edit in ordered:
        if edit.get("status") not in ("fail", "collapse"):
            continue
        is_culprit = bool(culprit) and edit.get("id") == culprit.get("id")
        ratio = edit.get("ratio")
        shown = ratio if isinstance(ratio, str) else f"x{ratio:.3f}"
        what = "collapsed the model" if edit["status"] == "collapse" else f"crossed fail_ratio {fail_ratio}"
        title = f"editgate: {'culprit ' if is_culprit else ''}edit '{edit['id']}' {what}"
        message = (f"After edit '{edit['id']}' the model's perplexity is {shown} of the unedited model's"
                   + (" (the first edit to cross a threshold)" if is_culprit else "")
                   + f". Target: {edit.get('target')!r} for {edit.get('prompt')!r}.")
        out.append({"file": annotation_path(doc, edit.get("file"), env, repo_dir), "line": edit.get("line") or None,
                    "title": title, "message": message, "id": edit.get("id")})
    for problem in doc.get("problems") or []:
        out.append({"file": annotation_path(doc, problem.get("file"), env, repo_dir), "line": problem.get("line"),
                    "title": "editgate: invalid input", "message": problem.get("message", ""), "id": None})
    if doc.get("verdict") == "failed":
        located = {e["id"] for e in edits if e.get("status") in ("fail", "collapse")}
        for reason in doc.get("reasons") or []:
            if not any(f"'{edit_id}'" in reason for edit_id in located):  # e.g. an edit-metric minimum
                out.append({"file": None, "line": None, "title": "editgate: the gate failed", "message": reason,
                            "id": None})
    if doc.get("verdict") in ("error", "interrupted"):
        title = "editgate: the run was interrupted" if doc["verdict"] == "interrupted" else "editgate: the run failed"
        out.append({"file": None, "line": None, "title": title,
                    "message": doc.get("error") or "the run failed", "id": None})
    return out


def format_annotation(item: dict[str, Any]) -> str:
    file = item.get("file")
    return command("error", item["message"], file=file, line=item.get("line") if file else None, title=item["title"])


# --- outputs and summary ----------------------------------------------------------------------------


def _append(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


def output_lines(values: Mapping[str, str]) -> str:
    """`name=value` lines for $GITHUB_OUTPUT; a value with a line break uses the heredoc form with a
    random delimiter (so no value can end it early)."""
    lines = []
    for name, value in values.items():
        value = "" if value is None else str(value)
        if "\n" in value or "\r" in value:
            delimiter = f"EDITGATE_{secrets.token_hex(8)}"
            lines.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
        else:
            lines.append(f"{name}={value}\n")
    return "".join(lines)


def publish(doc: dict[str, Any], paths: list[Path], echo: Callable[[str], None],
            env: Mapping[str, str] | None = None, repo_dir: Path | None = None) -> None:
    """Annotations (through `echo`), the job summary and the step outputs for one report."""
    env = os.environ if env is None else env
    items = annotations(doc, env, repo_dir)
    for item in items[:MAX_ANNOTATIONS]:
        echo(format_annotation(item))
    rest = items[MAX_ANNOTATIONS:]
    markdown = next((p for p in paths if p.name == "report.md"), None)
    if env.get("GITHUB_STEP_SUMMARY"):
        text = markdown.read_text(encoding="utf-8") if markdown and markdown.is_file() else ""
        if rest:
            text += f"\n**{len(rest)} more finding(s)** not annotated (GitHub shows at most {MAX_ANNOTATIONS}):\n\n"
            text += "".join(f"- {_where(item)}{item['message']}\n" for item in rest)
        _append(env["GITHUB_STEP_SUMMARY"], text.rstrip("\n") + "\n\n")
    if env.get("GITHUB_OUTPUT"):
        culprit = (doc.get("culprit") or {}).get("id") or ""
        _append(env["GITHUB_OUTPUT"], output_lines({
            "verdict": doc.get("verdict", ""), "culprit": culprit,
            "report": str(markdown) if markdown else ""}))


def _where(item: dict[str, Any]) -> str:
    if not item.get("file"):
        return ""
    return f"`{item['file']}:{item['line']}`: " if item.get("line") else f"`{item['file']}`: "


class LogGroup:
    """`::group::` ... `::endgroup::` around the run's log, with workflow commands stopped inside."""

    def __init__(self, echo: Callable[[str], None], title: str = "editgate run"):
        self.echo, self.title = echo, title
        self.token = f"editgate-{secrets.token_hex(12)}"

    def __enter__(self) -> "LogGroup":
        self.echo(f"::group::{escape_data(self.title)}")
        self.echo(f"::stop-commands::{self.token}")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.echo(f"::{self.token}::")
        self.echo("::endgroup::")
