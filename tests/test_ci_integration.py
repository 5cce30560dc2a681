"""CI integration: GitHub Actions annotations, outputs, summary and log groups; --base-ref; the edit pack
(--save-delta / apply-delta, bit for bit) and --save-model; `editgate init`; the workflow, action and
pre-commit files."""

from __future__ import annotations

import glob as globlib
import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from editgate import vcs
from editgate.cli import main
from editgate.reports import github

from conftest import LENIENT_POLICY, REPO_ROOT, TINY_ROME, write, yaml_hparams

POLICY = LENIENT_POLICY.format(warn_ratio=1.001, fail_ratio=1.003, collapse_ratio=100.0)

BASE_MANIFEST = """\
edits:
  - id: eiffel-rome
    prompt: "{} is located in the city of"
    subject: The Eiffel Tower
    target: Rome
    ground_truth: Paris
  - id: kremlin-london
    prompt: "{} is located in the city of"
    subject: The Kremlin
    target: London
"""

# the pull request: the two edits reordered and reformatted, one of them changed, and a new file
HEAD_MANIFEST = """\
# reordered and reformatted; kremlin-london now says Berlin
edits:
  - {id: kremlin-london, prompt: '{} is located in the city of', subject: 'The Kremlin', target: Berlin}
  - id: eiffel-rome
    subject: The Eiffel Tower
    prompt: '{} is located in the city of'
    ground_truth: 'Paris'
    target: "Rome"
"""

NEW_MANIFEST = """\
edits:
  - id: extreme
    prompt: "{} is located in the country of"
    subject: The Taj Mahal
    target: Egypt
    hparams: {clamp_norm_factor: 1000, v_lr: 50, v_weight_decay: 0}
"""


def run_cli(*args: str, env: dict | None = None):
    result = CliRunner().invoke(main, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-c", "user.name=editgate-tests", "-c", "user.email=tests@example.com",
                           "-c", "commit.gpgsign=false", "-C", str(cwd), *args],
                          capture_output=True, text=True, check=True)
    return proc.stdout


def config_text(model_dir: Path) -> str:
    return textwrap.dedent(f"""\
        model: {model_dir}
        device: cpu
        dtype: float32
        method: rome
        hparams:
          rome: {yaml_hparams(TINY_ROME)}
        manifests: edits/**/*.yaml
        policy: policies/default.yaml
        threads: 2
        """)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture(scope="module")
def pr_workspace(tmp_path_factory, tiny_model_dir):
    """A git work tree whose gated directory `gated/` has a base commit and a pull-request commit."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path_factory.mktemp("ci")
    ws = root / "ws"
    gated = ws / "gated"
    write(gated / "editgate.yaml", config_text(tiny_model_dir("llama", 4)))
    write(gated / "policies" / "default.yaml", POLICY)
    write(gated / "edits" / "2026-01-01-a.yaml", BASE_MANIFEST)
    git(ws, "init", "-q", "-b", "main")
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "base")
    write(gated / "edits" / "2026-01-01-a.yaml", HEAD_MANIFEST)
    write(gated / "edits" / "2026-02-01-b.yaml", NEW_MANIFEST)
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "pull request")
    return root, ws, gated


@pytest.fixture(scope="module")
def ci_run(pr_workspace):
    """`editgate run --base-ref HEAD~1 --save-model --save-delta` as GitHub Actions runs it."""
    root, ws, gated = pr_workspace
    summary, outputs = root / "summary.md", root / "outputs.txt"
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(outputs),
           "GITHUB_WORKSPACE": str(ws), "GITHUB_REPOSITORY": "octo/models", "GITHUB_SERVER_URL": "https://github.com"}
    out = root / "out"
    result = run_cli("run", "--repo", str(gated), "--out", str(out), "--base-ref", "HEAD~1",
                     "--save-model", str(root / "edited-model"), "--save-delta", str(root / "edits.safetensors"),
                     env=env)
    return {"root": root, "ws": ws, "gated": gated, "out": out, "result": result, "summary": summary,
            "outputs": outputs, "doc": read_json(out / "report.json")}


# --- GitHub Actions ---------------------------------------------------------------------------------


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


# --- --base-ref --------------------------------------------------------------------------------------


def test_base_ref_marks_new_edits_by_content(ci_run):
    doc = ci_run["doc"]
    new = {e["id"]: e["new"] for e in doc["edits"]}
    # eiffel-rome was only moved and reformatted; kremlin-london changed its target; extreme is new
    assert new == {"kremlin-london": True, "eiffel-rome": False, "extreme": True}
    base = git(ci_run["ws"], "rev-parse", "HEAD~1").strip()
    assert doc["base_ref"] == {"ref": "HEAD~1", "commit": base, "manifests": 1, "new_edits": 2}
    markdown = (ci_run["out"] / "report.md").read_text(encoding="utf-8")
    assert "**New in this change** (compared with `HEAD~1`" in markdown and "2 of 3 edits" in markdown
    rows = {line.split("`")[1]: line for line in markdown.splitlines() if line.startswith("| ") and "`" in line}
    assert "🆕" in rows["kremlin-london"] and "🆕" in rows["extreme"] and "🆕" not in rows["eiffel-rome"]


@needs_git
def test_edits_at_ref_follows_moves_and_ignores_broken_files(tmp_path):
    repo = tmp_path / "r"
    write(repo / "edits" / "a.yaml", BASE_MANIFEST)
    write(repo / "edits" / "broken.yaml", "edits: [\n")
    write(repo / "edits" / "cf.json", json.dumps([{"case_id": 7, "prompt": "{} plays", "subject": "Messi",
                                                    "target_new": "tennis", "ground_truth": "football"}]))
    write(repo / "notes" / "x.yaml", NEW_MANIFEST)  # not matched by the manifest globs
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    (repo / "edits" / "sub").mkdir()
    shutil.move(repo / "edits" / "a.yaml", repo / "edits" / "sub" / "moved.yaml")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "move")
    base = vcs.edits_at_ref(repo, ["edits/**/*.yaml", "edits/*.json"], "rome", "HEAD~1")
    assert base.files == ["edits/a.yaml", "edits/broken.yaml", "edits/cf.json"]
    from editgate.validate import load_inputs

    write(repo / "editgate.yaml", "manifests: [edits/**/*.yaml, edits/*.json]\n")
    write(repo / "edits" / "broken.yaml", NEW_MANIFEST)
    write(repo / "edits" / "cf.json", json.dumps([{"case_id": 7, "prompt": "{} plays", "subject": "Messi",
                                                    "target_new": "golf", "ground_truth": "football"}]))
    _, _, edits = load_inputs(repo)
    assert {e.id: base.is_new(e) for e in edits} == {"extreme": True, "case-7": True, "eiffel-rome": False,
                                                      "kremlin-london": False}


def test_bad_base_ref_exits_2_before_loading_a_model(pr_workspace, tmp_path):
    _, _, gated = pr_workspace
    result = run_cli("run", "--repo", str(gated), "--out", str(tmp_path / "out"), "--base-ref", "no-such-branch")
    assert result.exit_code == 2
    assert "--base-ref no-such-branch: git cannot find the commit 'no-such-branch'" in result.stderr
    assert "fetch-depth: 0" in result.stderr and "Traceback" not in result.output
    doc = read_json(tmp_path / "out" / "report.json")
    assert doc["verdict"] == "invalid" and doc["environment"] == {} and doc["repository"]["path"] == "gated"
    result = run_cli("run", "--repo", str(gated), "--out", str(tmp_path / "out2"), "--base-ref", "--upload-pack=x")
    assert result.exit_code == 2 and "is not a git ref" in result.stderr


def test_base_ref_outside_git_exits_2(tiny_repo, tmp_path):
    result = run_cli("run", "--repo", str(tiny_repo()), "--out", str(tmp_path / "out"), "--base-ref", "main")
    assert result.exit_code == 2 and "not inside a git work tree" in result.stderr


@pytest.mark.parametrize("pattern", ["edits/**/*.yaml", "edits/*.yaml", "**/*.y*ml", "edits/**", "e?its/[ab]*.yaml",
                                     "edits/[!a]*.yaml", "edits/sub/**/*.yaml", "*.yaml"])
def test_glob_match_agrees_with_glob(tmp_path, pattern):
    for relative in ("edits/a.yaml", "edits/b.yml", "edits/c.yaml", "edits/.hidden.yaml", "edits/sub/d.yaml",
                     "edits/sub/deep/e.yaml", "edits/.dir/f.yaml", "top.yaml", "other/g.yaml"):
        write(tmp_path / relative, "x")
    found = {Path(m).as_posix() for m in globlib.glob(pattern, root_dir=tmp_path, recursive=True)
             if (tmp_path / m).is_file()}
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {f for f in files if vcs.glob_match(pattern, f)} == found


def test_web_url_drops_credentials():
    assert vcs.web_url("git@github.com:octo/models.git") == "https://github.com/octo/models"
    assert vcs.web_url("ssh://git@gitlab.example.com/group/sub/repo.git") == "https://gitlab.example.com/group/sub/repo"
    assert vcs.web_url("https://user:secret@github.com/octo/models.git") == "https://github.com/octo/models"
    assert vcs.web_url("/srv/git/models") is None


# --- --save-delta, --save-model, apply-delta --------------------------------------------------------


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return tensor.contiguous().view(width)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


def test_edit_pack_reproduces_the_edited_weights_bit_for_bit(ci_run, tiny_model_dir, tmp_path):
    from editgate.export import read_pack

    root, doc = ci_run["root"], ci_run["doc"]
    saved, pack = root / "edited-model", root / "edits.safetensors"
    assert doc["artifacts"] == {"delta": str(pack), "delta_parameters": 1, "model": str(saved)}
    assert {"config.json", "tokenizer.json", "editgate-model.json"} <= {p.name for p in saved.iterdir()}
    assert list(saved.glob("*.safetensors"))
    assert not list(root.glob(".edited-model*"))  # no temporary directory left behind
    tensors, metadata = read_pack(pack)
    assert metadata["base_fingerprint"] == doc["environment"]["model_fingerprint"]
    (name, info), = metadata["parameters"].items()
    assert name == "model.layers.1.mlp.down_proj.weight" and info["changed"] > 0
    assert metadata["edits"] == [e["id"] for e in doc["edits"] if e["status"] != "not-run"]

    base_dir = tiny_model_dir("llama", 4)
    out = tmp_path / "applied"
    result = run_cli("apply-delta", "--model", str(base_dir), "--delta", str(pack), "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    edited, applied, base = _weights(saved), _weights(out), _weights(base_dir)
    assert set(applied) == set(edited)
    for key in edited:
        assert torch.equal(_bits(applied[key]), _bits(edited[key])), key
    assert not torch.equal(edited[name], base[name])  # the edit really changed the weight
    # everything else is the base model's
    assert all(torch.equal(_bits(edited[k]), _bits(base[k])) for k in base if k != name)


def test_edit_pack_rounding_is_exact():
    """W0 + (W1 - W0) is not always W1 in floating point: the pack stores corrections for those."""
    from editgate.export import apply_pack, pack_tensors, written_parameters
    from editgate.methods.base import AppliedEdit

    for dtype in (torch.float32, torch.bfloat16):
        model = torch.nn.Linear(3, 2, bias=False).to(dtype)
        base_values = torch.tensor([[1e8, 1.0, -3.0], [0.1, 2.0**-20, 7.0]]).to(dtype)
        edited_values = torch.tensor([[1.0, 1e8, -3.0], [0.3, 5.0, 7.0]]).to(dtype)
        with torch.no_grad():
            model.weight.copy_(edited_values)
        applied = [AppliedEdit("test", ["a"], {"weight": base_values.clone()})]
        tensors, meta = pack_tensors(model, written_parameters(applied))
        naive = (base_values.float() + tensors["delta/weight"]).to(dtype)
        assert not torch.equal(_bits(naive), _bits(edited_values))  # plain addition is not exact here
        assert meta["weight"]["fixups"] > 0 and meta["weight"]["changed"] == 4
        with torch.no_grad():
            model.weight.copy_(base_values)
        apply_pack(model, tensors, {"parameters": meta})
        assert torch.equal(_bits(model.weight.detach()), _bits(edited_values)), dtype


def test_apply_delta_refuses_another_base_model(ci_run, tiny_model_dir, tmp_path):
    other = tiny_model_dir("llama", 4, seed=1)
    result = run_cli("apply-delta", "--model", str(other), "--delta", str(ci_run["root"] / "edits.safetensors"),
                     "--out", str(tmp_path / "x"), "--quiet")
    assert result.exit_code == 2 and "differs from the pack's base weights" in result.stderr
    assert not (tmp_path / "x").exists()
    bogus = write(tmp_path / "bogus.safetensors", "not a pack")
    result = run_cli("apply-delta", "--model", str(other), "--delta", str(bogus), "--out", str(tmp_path / "y"))
    assert result.exit_code == 2 and "not a safetensors file" in result.stderr


def test_save_model_refuses_a_foreign_directory(pr_workspace, tmp_path):
    _, _, gated = pr_workspace
    write(tmp_path / "precious" / "thesis.txt", "do not delete")
    result = run_cli("run", "--repo", str(gated), "--out", str(tmp_path / "out"),
                     "--save-model", str(tmp_path / "precious"), "--quiet")
    assert result.exit_code == 2 and "was not written by editgate" in result.output
    assert (tmp_path / "precious" / "thesis.txt").read_text() == "do not delete"


# --- editgate init -------------------------------------------------------------------------------------


def test_init_then_validate_then_run(tmp_path, tiny_model_dir):
    target = tmp_path / "new-repo"
    result = run_cli("init", str(target))
    assert result.exit_code == 0, result.output
    manifests = list((target / "edits").glob("*-example.yaml"))
    assert len(manifests) == 1 and re.fullmatch(r"\d{4}-\d\d-\d\d-example\.yaml", manifests[0].name)
    for relative in ("editgate.yaml", "policies/default.yaml", "policies/strict.yaml", "policies/lenient.yaml",
                     ".github/workflows/editgate.yml"):
        assert (target / relative).is_file(), relative
    assert (target / ".github/workflows/editgate.yml").read_bytes() == \
        (REPO_ROOT / ".github/workflows/editgate.yml").read_bytes()
    assert (target / "policies/strict.yaml").read_bytes() == (REPO_ROOT / "editgate/policies/strict.yaml").read_bytes()

    result = run_cli("validate", str(target))
    assert result.exit_code == 0 and "ok: 1 edits valid" in result.stdout

    # nothing is overwritten without --force, and every conflict is named
    (target / "editgate.yaml").write_text("model: mine\n")
    result = run_cli("init", str(target))
    assert result.exit_code == 2 and "editgate.yaml: already exists" in result.stderr
    assert "policies/lenient.yaml: already exists" in result.stderr
    assert (target / "editgate.yaml").read_text() == "model: mine\n"
    assert run_cli("init", str(target), "--force").exit_code == 0
    assert (target / "editgate.yaml").read_text().startswith("# editgate configuration")

    # and it runs: on a tiny model, with ROME sized for it and a small perplexity sample
    with (target / "editgate.yaml").open("a") as handle:
        handle.write(f"hparams: {{rome: {yaml_hparams(TINY_ROME)}}}\n")
    small = write(tmp_path / "small-policy.yaml", LENIENT_POLICY.format(warn_ratio=5.0, fail_ratio=10.0,
                                                                        collapse_ratio=100.0))
    result = run_cli("run", "--repo", str(target), "--model", str(tiny_model_dir("llama", 4)), "--device", "cpu",
                     "--dtype", "float32", "--policy", str(small), "--out", str(tmp_path / "out"), "--quiet",
                     env={"HOME": str(tmp_path / "home"), "EDITGATE_CACHE_DIR": ""})
    assert result.exit_code == 0, result.output
    doc = read_json(tmp_path / "out" / "report.json")
    assert [e["id"] for e in doc["edits"]] == ["example-eiffel-tower-city"] and doc["verdict"] == "passed"
    assert (tmp_path / "home" / ".cache" / "editgate").is_dir()  # the default cache, under HOME


# --- workflow, action and pre-commit files ----------------------------------------------------------


def _load(relative: str) -> dict:
    data = yaml.safe_load((REPO_ROOT / relative).read_text(encoding="utf-8"))
    if True in data:  # YAML 1.1 reads the key `on` as true
        data["on"] = data.pop(True)
    return data


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def test_the_sample_workflow_is_the_init_template():
    assert (REPO_ROOT / ".github/workflows/editgate.yml").read_bytes() == \
        (REPO_ROOT / "editgate/templates/editgate-workflow.yml").read_bytes()


def test_sample_workflow_structure():
    text = (REPO_ROOT / ".github/workflows/editgate.yml").read_text(encoding="utf-8")
    workflow = _load(".github/workflows/editgate.yml")
    assert set(workflow["on"]) == {"pull_request"}
    assert {"edits/**", "policies/**", "editgate.yaml"} <= set(workflow["on"]["pull_request"]["paths"])
    job = workflow["jobs"]["gate"]
    assert job["runs-on"] == ["self-hosted", "gpu"]
    assert "head.repo.full_name == github.repository" in job["if"]  # fork PRs are skipped
    assert re.search(r"self-hosted runners? must never run pull requests from forks", text, re.I | re.S)
    steps = _steps(workflow)
    uses = [s.get("uses", "") for s in steps]
    checkout = steps[uses.index(next(u for u in uses if u.startswith("actions/checkout@")))]
    assert checkout["with"]["fetch-depth"] == 0
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache@"))
    assert cache["with"]["path"] == "~/.cache/editgate"
    assert "steps.keys.outputs.model" in cache["with"]["key"] and "steps.keys.outputs.version" in cache["with"]["key"]
    run = next(s for s in steps if "editgate run" in s.get("run", ""))
    assert re.search(r'editgate run --base-ref "origin/\$BASE_REF" --out editgate-report', run["run"])
    assert run["env"]["BASE_REF"] == "${{ github.base_ref }}"
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()" and upload["with"]["path"].startswith("editgate-report")
    comment = next(s for s in steps if s.get("uses", "").startswith("actions/github-script@"))
    assert comment["if"].startswith("always()")
    script = comment["with"]["script"]
    assert "<!-- editgate-report -->" in script and "updateComment" in script and "createComment" in script
    assert workflow["permissions"] == {"contents": "read", "pull-requests": "write"}


def test_no_expression_is_interpolated_into_a_shell_script():
    """`${{ }}` inside `run:` is a script-injection hazard; values go through env instead."""
    for relative in (".github/workflows/editgate.yml", ".github/workflows/ci.yml", "action.yml"):
        data = _load(relative)
        steps = _steps(data) if "jobs" in data else data["runs"]["steps"]
        for step in steps:
            assert "${{" not in step.get("run", ""), (relative, step.get("name"))


def test_project_ci_workflow():
    workflow = _load(".github/workflows/ci.yml")
    job = workflow["jobs"]["test"]
    assert job["runs-on"] == "ubuntu-latest"
    steps = job["steps"]
    python = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python@"))
    assert str(python["with"]["python-version"]) == "3.11"
    assert any(s.get("run", "").strip() == "make test" for s in steps)


def test_composite_action():
    action = _load("action.yml")
    assert action["runs"]["using"] == "composite"
    assert {"repo", "policy", "out", "base-ref"} <= set(action["inputs"])
    for name in ("verdict", "culprit", "report"):
        assert action["outputs"][name]["value"] == f"${{{{ steps.run.outputs.{name} }}}}"
    run = next(s for s in action["runs"]["steps"] if s.get("id") == "run")
    assert all(s.get("shell") == "bash" for s in action["runs"]["steps"])
    assert '--base-ref "$INPUT_BASE_REF"' in run["run"] and run["env"]["INPUT_BASE_REF"] == "${{ inputs.base-ref }}"


def test_pre_commit_hook():
    hooks = yaml.safe_load((REPO_ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    hook = next(h for h in hooks if h["id"] == "editgate-validate")
    assert hook["entry"] == "editgate validate" and hook["pass_filenames"] is False
    pattern = re.compile(hook["files"])
    for path in ("edits/2026-01-01-a.yaml", "edits/sub/b.yml", "policies/default.yaml", "editgate.yaml",
                 "editgate.yml"):
        assert pattern.search(path), path
    for path in ("src/edits.py", "README.md", "edits/notes.txt", "myeditgate.yaml"):
        assert not pattern.search(path), path


def test_workflows_pass_actionlint():
    binary = shutil.which("actionlint")
    if binary is None:
        pytest.skip("actionlint is not installed (the structural tests above still ran)")
    proc = subprocess.run([binary, "-no-color", ".github/workflows/editgate.yml", ".github/workflows/ci.yml"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_saving_weights_of_memory_edits_is_refused(tiny_repo, tmp_path):
    from editgate.methods import METHODS

    if "memory" not in METHODS:
        pytest.skip("no memory method")
    manifest = ("edits:\n  - id: remembered\n    prompt: '{} is in'\n    subject: The Kremlin\n"
                "    target: London\n    method: memory\n")
    repo = tiny_repo(manifests={"edits/m.yaml": manifest})
    result = run_cli("run", "--repo", str(repo), "--out", str(tmp_path / "out"),
                     "--save-delta", str(tmp_path / "pack.safetensors"))
    assert result.exit_code == 2 and "keeps edits out of the weights" in result.output
    assert not (tmp_path / "pack.safetensors").exists()
