"""GitHub Actions: workflow-command escaping, step outputs, annotations (capped, on the manifest line), the job summary
and the folded log, on a pull request's run (conftest's `ci_run`)."""

from __future__ import annotations

import re

from editgate.reports import github

from helpers import git, run_cli, write


def test_escaping_follows_the_runner_rules():
    assert github.escape_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert github.escape_property("a:b,c%d\ne") == "a%3Ab%2Cc%25d%0Ae"
    line = github.command("error", "x: 1, y\n::warning::injected", file="edits/a,b:c.yaml", line=3, title="t: x, y")
    assert line == "::error file=edits/a%2Cb%3Ac.yaml,line=3,title=t%3A x%2C y::x: 1, y%0A::warning::injected"
    assert line.count("\n") == 0
    assert github.command("error", "m") == "::error::m"


def test_output_lines_use_a_heredoc_for_multiline_values():
    text = github.output_lines({"verdict": "failed", "culprit": "bad\nid"})
    assert text.startswith("verdict=failed\nculprit<<EDITGATE_")
    delimiter = text.split("culprit<<", 1)[1].split("\n", 1)[0]
    assert text.endswith(f"culprit<<{delimiter}\nbad\nid\n{delimiter}\n")


def _doc_with_failures(n: int, path: str | None = "gated") -> dict:
    edits = [{"id": f"e{i}", "file": "edits/m.yaml", "line": 2 + 5 * i, "status": "fail", "ratio": 2.0,
              "target": "T", "prompt": "P"} for i in range(n)]
    return {"verdict": "failed", "reasons": ["edit 'e0' (edits/m.yaml:2) crossed fail_ratio 1.5"],
            "culprit": {"id": "e0", "file": "edits/m.yaml", "line": 2, "status": "fail", "ratio": 2.0},
            "edits": edits, "problems": [], "policy": {"perplexity": {"fail_ratio": 1.5}},
            "repository": None if path is None else {"url": None, "commit": None, "path": path, "dirty": False}}


def test_publish_caps_annotations_and_lists_the_rest_in_the_summary(tmp_path):
    doc = _doc_with_failures(13)
    report = write(tmp_path / "out" / "report.md", "## ❌ editgate: failed\n")
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
           "GITHUB_OUTPUT": str(tmp_path / "output")}
    lines: list[str] = []
    github.publish(doc, [report], lines.append, env=env)
    assert len(lines) == 10 and all(line.startswith("::error file=gated/edits/m.yaml,line=") for line in lines)
    assert "title=editgate%3A culprit edit 'e0'" in lines[0]
    summary = (tmp_path / "summary").read_text(encoding="utf-8")
    assert summary.startswith("## ❌ editgate: failed") and "**3 more finding(s)**" in summary
    assert "`gated/edits/m.yaml:62`" in summary  # e12
    assert (tmp_path / "output").read_text(encoding="utf-8") == f"verdict=failed\nculprit=e0\nreport={report}\n"


def test_annotation_paths_without_git_come_from_the_workspace(tmp_path):
    doc = _doc_with_failures(1, path=None)
    env = {"GITHUB_WORKSPACE": str(tmp_path)}
    (tmp_path / "sub" / "repo").mkdir(parents=True)
    items = github.annotations(doc, env, repo_dir=tmp_path / "sub" / "repo")
    assert items[0]["file"] == "sub/repo/edits/m.yaml"
    assert github.annotations(doc, env, repo_dir=tmp_path)[0]["file"] == "edits/m.yaml"
    assert github.annotation_path(doc, "<input>", env) is None


def test_invalid_input_is_annotated_at_its_line(tmp_path):
    from editgate.errors import Problem
    from editgate.reports import error_document

    doc = error_document("invalid", 2, "invalid input", [Problem("edits/a.yaml", 6, "edit 'x': 'target' is required"),
                                                        Problem("<input>", None, "--device 'tpu': use auto")])
    doc["repository"] = {"url": None, "commit": None, "path": "models", "dirty": False}
    lines = [github.format_annotation(item) for item in github.annotations(doc, {})]
    assert lines[0] == ("::error file=models/edits/a.yaml,line=6,title=editgate%3A invalid input::"
                        "edit 'x': 'target' is required")
    assert lines[1] == "::error title=editgate%3A invalid input::--device 'tpu': use auto"


def test_a_run_on_github_actions(ci_run):
    result, doc = ci_run["result"], ci_run["doc"]
    assert result.exit_code == 1 and doc["verdict"] == "failed", result.output
    culprit = doc["culprit"]
    assert culprit is not None
    stderr = result.stderr.splitlines()
    # the run's log is folded, with workflow commands stopped inside it
    start = stderr.index("::group::editgate run")
    token = stderr[start + 1].removeprefix("::stop-commands::")
    assert re.fullmatch(r"editgate-[0-9a-f]{24}", token)
    end = stderr.index(f"::{token}::")
    assert stderr[end + 1] == "::endgroup::" and any("baseline perplexity" in line for line in stderr[start:end])
    # annotations after the group, on the culprit's line, with a path from the git root
    errors = [line for line in stderr[end:] if line.startswith("::error ")]
    assert 1 <= len(errors) <= 10
    match = re.match(r"::error file=(?P<file>[^,]+),line=(?P<line>\d+),title=(?P<title>[^:]+)::(?P<message>.+)",
                     errors[0])
    assert match, errors[0]
    assert match["file"] == f"gated/{culprit['file']}" and int(match["line"]) == culprit["line"]
    assert f"culprit edit '{culprit['id']}'" in match["title"].replace("%3A", ":")
    manifest = (ci_run["ws"] / match["file"]).read_text(encoding="utf-8").splitlines()
    assert culprit["id"] in manifest[culprit["line"] - 1]
    # the job summary and the step outputs
    assert ci_run["summary"].read_text(encoding="utf-8").startswith("## ❌ editgate: failed")
    outputs = dict(line.split("=", 1) for line in ci_run["outputs"].read_text(encoding="utf-8").splitlines())
    assert outputs == {"verdict": "failed", "culprit": culprit["id"], "report": str(ci_run["out"] / "report.md")}
    # links to the manifest line at the commit that ran
    head = git(ci_run["ws"], "rev-parse", "HEAD").strip()
    assert doc["repository"] == {"url": "https://github.com/octo/models", "commit": head, "path": "gated",
                                 "dirty": False}
    link = f"https://github.com/octo/models/blob/{head}/gated/{culprit['file']}#L{culprit['line']}"
    assert f"([source]({link}))" in (ci_run["out"] / "report.md").read_text(encoding="utf-8")


def test_no_github_commands_outside_github_actions(tmp_path):
    result = run_cli("run", "--repo", str(tmp_path / "missing"), "--out", str(tmp_path / "out"),
                     env={"GITHUB_ACTIONS": None})
    assert result.exit_code == 2 and "::" not in result.output
