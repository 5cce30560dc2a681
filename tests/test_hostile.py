"""Hostile and broken repositories: every file of a gated repository comes from a pull request.

One section per class of attack or mistake; each test names the mechanism that closes the class, and
tries several inputs of that class rather than the one that was first found.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from editgate.cli import EXIT_INTERRUPTED, main
from editgate.globbing import glob_match

from helpers import EDITS_A, gate_policy, write

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = 'edits:\n  - id: a\n    prompt: "{} is located in the city of"\n    subject: Big Ben\n    target: Paris\n'


def cli(*args: str, env: dict | None = None):
    result = CliRunner().invoke(main, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def repo_with(tmp_path: Path, config: str = "", manifest: str = MANIFEST, policy: str | None = None,
              name: str = "repo") -> Path:
    root = tmp_path / name
    write(root / "edits" / "a.yaml", manifest)
    if config:
        write(root / "editgate.yaml", textwrap.dedent(config))
    if policy is not None:
        write(root / "policies" / "default.yaml", textwrap.dedent(policy))
    return root


def invalid(tmp_path: Path, **files) -> str:
    """`editgate validate` on the repository: it must exit 2 (no traceback) and return its stderr."""
    result = cli("validate", str(repo_with(tmp_path, **files)))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.stderr


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: the inputs here used to take minutes or forever."""
    def expire(*_):
        raise AssertionError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- 1. nothing from the repository executes -------------------------------------------------------


def test_the_repository_cannot_enable_remote_code(tmp_path):
    stderr = invalid(tmp_path, config="trust_remote_code: true\n")
    assert "editgate.yaml:1: trust_remote_code:" in stderr and "--trust-remote-code" in stderr


def test_a_model_directory_in_the_repository_never_runs_its_code(tmp_path, tiny_model_dir):
    """A pull request ships a model whose config names its own Python class: it is not imported."""
    import shutil

    repo = repo_with(tmp_path, config="model: model\ndevice: cpu\ndtype: float32\nthreads: 1\n",
                     policy=gate_policy(warn_ratio=5.0, fail_ratio=10.0, collapse_ratio=100.0))
    shutil.copytree(tiny_model_dir("llama", 4), repo / "model")
    marker = tmp_path / "code-ran"
    write(repo / "model" / "evil.py", f"open({str(marker)!r}, 'w').write('ran')\n"
                                      "from transformers import LlamaForCausalLM as Evil\n")
    config = json.loads((repo / "model" / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.Evil", "AutoConfig": "evil.Evil"}
    (repo / "model" / "config.json").write_text(json.dumps(config))
    result = cli("run", "--repo", str(repo), "--out", str(tmp_path / "out"), "--quiet")
    assert not marker.exists(), "the repository's Python file was executed"
    assert result.exit_code in (0, 1, 3) and "Traceback" not in result.output


@pytest.mark.parametrize("spec", ["hf:/etc:train", "hf:../../etc:train", "hf:json:train", "hf:text:x:train",
                                  "hf:edits:train", "hf:~/data:train"])
def test_hf_datasets_cannot_read_local_files(tmp_path, spec, monkeypatch):
    """`hf:` takes a dataset id of the local datasets cache: not a path, a local directory, nor a file
    builder (json, text, ...) that would read whatever it is pointed at."""
    repo = repo_with(tmp_path, policy=f"perplexity:\n  corpus: '{spec}'\n")
    monkeypatch.chdir(repo)  # `edits` is a local directory here: datasets would read it
    result = cli("validate", str(repo))
    assert result.exit_code == 2 and "policies/default.yaml:2: perplexity.corpus:" in result.stderr, result.output


# --- 2. the repository cannot exhaust the runner ---------------------------------------------------


@pytest.mark.parametrize("config, where", [
    ("threads: 100000\n", "editgate.yaml:1: threads:"),
    ("seed: 1000000000000000000000000000000\n", "editgate.yaml:1: seed:"),
    ("hparams: {rome: {v_steps: 1000000000}}\n", "hparams.rome: hyperparameter 'v_steps'"),
    ("hparams: {ft: {steps: 1000000000}}\n", "hparams.ft: hyperparameter 'steps'"),
    ("hparams: {memit: {batch_size: 0}}\n", "hparams.memit: hyperparameter 'batch_size'"),
    ("hparams: {rome: {stats_samples: 0}}\n", "hparams.rome: hyperparameter 'stats_samples'"),
    ("hparams: {rome: {context_length: 100000}}\n", "hparams.rome: hyperparameter 'context_length'"),
    ("manifests: [" + ", ".join(f"'e{i}/*.yaml'" for i in range(100)) + "]\n", "manifests: at most"),
])
def test_counts_in_editgate_yaml_are_bounded(tmp_path, config, where):
    assert where in invalid(tmp_path, config=config)


@pytest.mark.parametrize("key, value", [("samples", 0), ("samples", 10**9), ("max_tokens", 10**9),
                                        ("batch_tokens", 0), ("batch_tokens", 10**12), ("seed", 10**30),
                                        ("check_every", 10**12)])
def test_counts_in_the_policy_are_bounded(tmp_path, key, value):
    stderr = invalid(tmp_path, policy=f"perplexity:\n  {key}: {value}\n")
    assert f"policies/default.yaml:2: perplexity.{key} must be a whole number from" in stderr


def test_hyperparameters_in_a_manifest_are_bounded_and_finite(tmp_path):
    manifest = MANIFEST + "    hparams: {v_lr: .nan, clamp_norm_factor: -1.0, layer: -1, v_steps: 1000000000}\n"
    stderr = invalid(tmp_path, manifest=manifest)
    for key in ("v_lr", "clamp_norm_factor", "layer", "v_steps"):
        assert f"hyperparameter '{key}' of method 'rome'" in stderr, key
    assert "must be a finite number" in stderr and "not -1" in stderr


def test_the_thread_count_a_run_uses_is_at_most_the_cores_it_may_use():
    from editgate.models import set_threads
    from editgate.threads import usable_cpus

    assert set_threads(10**6) == usable_cpus()


def test_globs_are_matched_in_bounded_time(tmp_path):
    """Ten `**` in one pattern over a 60-deep tree: the work tree walk and the --base-ref matcher alike."""
    deep = tmp_path / "repo" / Path(*["d"] * 60)
    deep.mkdir(parents=True)
    write(deep / "x.yaml", MANIFEST)
    pattern = "/".join(["**"] * 10 + ["x.yaml"])
    with deadline(30):
        assert glob_match(pattern, "/".join(["d"] * 60 + ["x.yaml"]))
        assert not glob_match("/".join(["**", "d"] * 12 + ["y"]), "/".join(["d"] * 60 + ["x.yaml"]))
        result = cli("validate", str(repo_with(tmp_path, config=f"manifests: '{pattern}'\n")))
    assert result.exit_code == 0, result.output


def test_glob_semantics_match_the_standard_library(tmp_path):
    import glob

    files = ["a.yaml", "edits/x.yaml", "edits/.hidden.yaml", "edits/sub/y.yaml", "edits/.h/z.yaml",
             "other/edits/w.yaml", "edits/sub/deeper/v.yml"]
    for relative in files:
        write(tmp_path / relative, "x")
    for pattern in ("**/*.yaml", "edits/**", "edits/**/*.yaml", "*/edits/*.yaml", "edits/*", "**/sub/**",
                    "edits/.*", "edits/[sx]*", "**/**/*.yml", "edits/**/.*/*.yaml"):
        expected = {p for p in glob.glob(pattern, root_dir=tmp_path, recursive=True) if (tmp_path / p).is_file()}
        assert {f for f in files if glob_match(pattern, f)} == expected, pattern


def test_a_symlink_loop_is_one_thing_not_hundreds(tmp_path):
    repo = repo_with(tmp_path)
    os.symlink("..", repo / "edits" / "loop")
    os.symlink(".", repo / "edits" / "self")
    result = cli("validate", str(repo))
    assert result.exit_code == 0 and "ok: 1 edits valid" in result.stdout, result.output


# --- 3. no workflow-command injection ----------------------------------------------------------------


def test_a_manifest_file_name_cannot_forge_log_lines(tmp_path):
    repo = repo_with(tmp_path)
    write(repo / "edits" / "b\n::warning ::forged\nok: 99 edits valid\n.yaml", MANIFEST.replace("id: a", "id: b"))
    result = cli("validate", str(repo), env={"GITHUB_ACTIONS": "true"})
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert not any(line.lstrip().startswith("::") for line in lines), lines
    assert not any(line.startswith("ok:") for line in lines)
    assert "control character" in result.stderr


@pytest.mark.parametrize("bad_id", ["a\nb", "::warning ::x\u2028y", "tab\x1b[31m"])
def test_ids_with_control_characters_are_input_errors(tmp_path, bad_id):
    manifest = MANIFEST.replace("id: a", f"id: {json.dumps(bad_id)}")
    stderr = invalid(tmp_path, manifest=manifest)
    assert "without control characters" in stderr
    assert not any(line.lstrip().startswith("::") for line in stderr.splitlines())


def test_repository_text_in_a_github_run_cannot_act_as_a_command(tmp_path, tiny_repo):
    """Targets and prompts may hold anything; whatever editgate prints of them is escaped or fenced,
    and the only workflow commands on the log are editgate's own."""
    manifest = EDITS_A.replace("target: Rome", 'target: "Rome\\n::warning file=x::forged\\n::endgroup::"')
    repo = tiny_repo(manifests={"edits/a.yaml": manifest}, warn_ratio=1.0, fail_ratio=1.0, collapse_ratio=100.0)
    summary, output = tmp_path / "summary.md", tmp_path / "output.txt"
    result = cli("run", "--repo", str(repo), "--out", str(tmp_path / "out"),
                 env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(output)})
    assert result.exit_code in (0, 1), result.output
    ours = ("::group::", "::endgroup::", "::stop-commands::", "::editgate-", "::error ")
    for line in result.output.splitlines():
        if line.startswith("::"):
            assert line.startswith(ours), line
    assert "\n::warning" not in summary.read_text(encoding="utf-8")
    junit = (tmp_path / "out" / "junit.xml").read_text(encoding="utf-8")
    assert "<testsuites" in junit


# --- 4. the workflow never parses repository YAML ---------------------------------------------------


def test_the_workflow_asks_editgate_for_its_cache_key(tmp_path):
    workflow = (REPO_ROOT / ".github/workflows/editgate.yml").read_text(encoding="utf-8")
    assert "editgate cache-key" in workflow
    assert "yaml" not in workflow.split("steps:", 1)[1].replace("editgate.yaml", "").replace(".yml", "")
    bomb = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    bomb += [f"{n}: &{n} [{', '.join(['*' + p] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]
    repo = repo_with(tmp_path, config="\n".join(bomb) + "\n")
    with deadline(20):
        result = cli("cache-key", "--repo", str(repo))
    assert result.exit_code == 0 and "model=default" in result.stdout
    good = repo_with(tmp_path, config="model: 'some/model\\n::x'\n", name="good")
    lines = cli("cache-key", "--repo", str(good)).stdout.splitlines()
    assert lines[0].startswith("version=") and lines[1] == "model=some_model_n_x"


# --- 5. validate finds every input error before a model is loaded -------------------------------------


@pytest.mark.parametrize("corpus, data, expected", [
    ("missing.json", None, "'missing.json' does not exist"),
    ("bad.json", '[{"text": "a"},', "bad.json"),
    ("empty.json", "[]", "the corpus has no texts"),
    ("notext.jsonl", '{"title": "x"}\n', "notext.jsonl:1: a record needs a text field"),
    ("deep.json", "[" * 5000 + "]" * 5000, "deep.json"),
    ("deep.jsonl", "[" * 5000 + "]" * 5000 + "\n", "deep.jsonl:1: nested too deeply"),
    ("nul.txt", "one\ntwo\x00\n", None),
])
def test_a_broken_corpus_is_found_by_validate(tmp_path, corpus, data, expected):
    repo = repo_with(tmp_path, policy=f"perplexity:\n  corpus: {corpus}\n")
    if data is not None:
        write(repo / corpus, data)
    result = cli("validate", str(repo))
    if expected is None:  # a text corpus may hold any character: it is data, not YAML
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2 and expected in result.stderr, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("suite, files, expected", [
    ("missing.yaml", {}, "'missing.yaml' does not exist"),
    ("../outside.yaml", {}, "is outside the repository"),
    ("builtin:nope", {}, "unknown builtin suite"),
    ("tagged.yaml", {"tagged.yaml": "tasks: !!python/object/apply:os.system ['touch /tmp/x']\n"},
     "tags such as !!python"),
    ("suite.yaml", {"suite.yaml": "tasks: [t.yaml]\n",
                    "t.yaml": "task: t\ndataset: ~/.bashrc\noutput_type: perplexity\ndoc_to_text: '{{text}}'\n"},
     "starts with '~'"),
])
def test_a_broken_benchmark_suite_is_found_by_validate(tmp_path, suite, files, expected):
    repo = repo_with(tmp_path, policy=f"benchmarks:\n  suite: '{suite}'\n")
    for name, text in files.items():
        write(repo / name, text)
    result = cli("validate", str(repo))
    assert result.exit_code == 2 and expected in result.stderr, result.output


def test_an_unwritable_out_is_found_before_the_model_is_loaded(tmp_path, tiny_repo):
    repo = tiny_repo()
    write(tmp_path / "a-file", "x")
    result = cli("run", "--repo", str(repo), "--out", str(tmp_path / "a-file" / "out"))
    assert result.exit_code == 2 and "--out" in result.output and "cannot write reports" in result.output
    assert "loading" not in result.output and "Traceback" not in result.output


# --- 6. paths stay where they belong ---------------------------------------------------------------


@pytest.mark.parametrize("corpus", ["~/.bashrc", "/etc/passwd", "../x.txt"])
def test_a_corpus_is_read_from_the_repository_only(tmp_path, corpus):
    stderr = invalid(tmp_path, policy=f"perplexity:\n  corpus: '{corpus}'\n")
    assert "policies/default.yaml:2:" in stderr


def test_the_cache_directory_is_the_runners_choice(tmp_path):
    stderr = invalid(tmp_path, config="cache_dir: /etc/editgate-cache\n")
    assert "editgate.yaml:1: cache_dir:" in stderr and "EDITGATE_CACHE_DIR" in stderr


def test_a_relative_model_path_is_relative_to_the_repository(tmp_path, tiny_model_dir, monkeypatch):
    import shutil

    repo = repo_with(tmp_path, config="model: models/tiny\ndevice: cpu\ndtype: float32\nthreads: 1\n",
                     policy=gate_policy(warn_ratio=5.0, fail_ratio=10.0, collapse_ratio=100.0))
    shutil.copytree(tiny_model_dir("llama", 4), repo / "models" / "tiny")
    monkeypatch.chdir(tmp_path)  # not the repository
    result = cli("run", "--repo", "repo", "--out", str(tmp_path / "out"), "--quiet")
    assert result.exit_code == 0, result.output
    assert invalid(tmp_path, config="model: ../elsewhere\n", name="escape").count("outside the repository") == 1
    assert "starts with '~'" in invalid(tmp_path, config="model: ~/models/x\n", name="home")


# --- 7. editgate init never writes through a symlink ---------------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_init_never_writes_through_a_symlink(tmp_path, force):
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside / "editgate.yml", "precious\n")
    target = tmp_path / "new"
    (target / ".github").mkdir(parents=True)
    os.symlink(outside, target / ".github" / "workflows")
    os.symlink(outside / "precious.yaml", target / "editgate.yaml")  # dangling: would create a file outside
    result = cli("init", str(target), *(["--force"] if force else []))
    assert result.exit_code == 2 and "is a symbolic link" in result.stderr, result.output
    assert sorted(p.name for p in outside.iterdir()) == ["editgate.yml"]
    assert (outside / "editgate.yml").read_text() == "precious\n"


# --- 8. no traceback anywhere, exit 1 only for a failed gate --------------------------------------------


def test_no_command_shows_a_traceback(tmp_path, tiny_repo):
    repo = tiny_repo()
    cases = [
        (["baseline", "--repo", str(repo), "--device", "cuda"], 3),  # no GPU here
        (["init", str(tmp_path / "a-file" / "x")], 2),
        (["report", str(write(tmp_path / "deep.json", "[" * 100000 + "]" * 100000))], 2),
        (["report", str(write(tmp_path / "odd.json", '{"verdict": 1, "schema_version": 1, "edits": 7}'))], 2),
        (["run", "--repo", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a-file" / "out")], 2),
    ]
    write(tmp_path / "a-file", "x")
    for args, code in cases:
        result = cli(*args)
        assert result.exit_code == code, (args, result.output)
        assert "Traceback" not in result.output, args


def test_an_unexpected_error_is_one_line_and_exit_3(monkeypatch):
    import editgate.validate

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(editgate.validate, "validate_paths", broken)
    result = cli("validate", ".")
    assert result.exit_code == 3 and "editgate: ZeroDivisionError: simulated bug" in result.stderr
    assert "Traceback" not in result.output


# --- 9. an interrupted run leaves its report ----------------------------------------------------------


def _start_run(repo: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "editgate.cli", "run", "--repo", str(repo), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_line(proc: subprocess.Popen, needle: str, seconds: float) -> list[str]:
    seen, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} never appeared: {''.join(seen)[-2000:]}")


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGTERM]])
def test_a_signal_leaves_an_interrupted_report(tmp_path, tiny_repo, signals):
    """GitHub cancels a job with SIGINT, then SIGTERM: the report says how far the run got."""
    many = "edits:\n" + "".join(
        f'  - id: e{i}\n    prompt: "{{}} is located in the city of"\n    subject: Landmark {i}\n'
        f"    target: City {i}\n" for i in range(40))
    repo = tiny_repo(manifests={"edits/many.yaml": many})
    out = tmp_path / "out"
    proc = _start_run(repo, out)
    try:
        _wait_for_line(proc, "[2/40]", 240)
        for signum in signals:
            proc.send_signal(signum)
            time.sleep(0.2)
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
    assert code == EXIT_INTERRUPTED, proc.stderr.read()
    doc = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert doc["verdict"] == "interrupted" and doc["exit_code"] == EXIT_INTERRUPTED
    assert doc["error"].startswith("interrupted by SIG")
    statuses = [e["status"] for e in doc["edits"]]
    assert statuses[:2] == ["pass", "pass"] and statuses[-1] == "not-run"
    assert (out / "report.md").read_text(encoding="utf-8").startswith("## ⏹️ editgate: interrupted")
    assert "interrupted" in (out / "junit.xml").read_text(encoding="utf-8")


# --- 10. the cache survives concurrency (damage and crashes: tests/test_cache_integrity.py) -------------


def test_two_runs_on_one_cold_cache_both_succeed_with_the_same_figures(tmp_path, tiny_repo):
    repo = tiny_repo()
    env = {**os.environ, "EDITGATE_CACHE_DIR": str(tmp_path / "shared-cache"), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "editgate.cli", "run", "--repo", str(repo), "--out",
                               str(tmp_path / f"out{i}"), "--quiet"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [(proc.wait(timeout=600), proc.stderr.read()) for proc in procs]
    assert [code for code, _ in results] == [0, 0], results
    docs = [json.loads((tmp_path / f"out{i}" / "report.json").read_text()) for i in range(2)]
    assert docs[0]["baseline"] == docs[1]["baseline"]
    assert [e["ratio"] for e in docs[0]["edits"]] == [e["ratio"] for e in docs[1]["edits"]]
    again = cli("run", "--repo", str(repo), "--out", str(tmp_path / "out2"), "--quiet",
                env={"EDITGATE_CACHE_DIR": str(tmp_path / "shared-cache")})
    third = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert again.exit_code == 0 and "perplexity" in third["cached"]  # what they left is trusted and reused
    assert [e["ratio"] for e in third["edits"]] == [e["ratio"] for e in docs[0]["edits"]]


# --- 11. small things a careful user notices ------------------------------------------------------------


def test_reports_are_written_with_the_users_umask(tmp_path, tiny_repo):
    previous = os.umask(0o022)
    try:
        cli("run", "--repo", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    finally:
        os.umask(previous)
    for name in ("report.json", "report.md", "junit.xml"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == 0o644, name


@pytest.mark.parametrize("where", ["editgate.yaml", "edits/a.yaml", "policies/default.yaml"])
def test_a_nul_byte_is_reported_with_its_line(tmp_path, where):
    repo = repo_with(tmp_path, config="device: cpu\n", policy="perplexity:\n  samples: 8\n")
    path = repo / where
    path.write_text(path.read_text() + "# a comment with a NUL \x00 here\n")
    result = cli("validate", str(repo))
    line = len(path.read_text().splitlines())
    assert result.exit_code == 2 and f"{where}:{line}: contains the control character U+0000" in result.stderr


def test_a_directory_that_is_no_model_gets_a_short_error(tmp_path, tiny_repo):
    repo = tiny_repo()
    result = cli("run", "--repo", str(repo), "--model", "/etc", "--out", str(tmp_path / "out"), "--quiet")
    assert result.exit_code == 3
    error = json.loads((tmp_path / "out" / "report.json").read_text())["error"]
    assert "without config.json" in error and "offline" not in error and "\n" not in error


@pytest.mark.parametrize("kind", ["dangling", "directory", "fifo", "both"])
def test_an_odd_editgate_yaml_is_never_silently_absent(tmp_path, kind):
    repo = repo_with(tmp_path)
    config = repo / "editgate.yaml"
    if kind == "dangling":
        os.symlink(tmp_path / "nowhere.yaml", config)
    elif kind == "directory":
        config.mkdir()
    elif kind == "fifo":
        os.mkfifo(config)
    else:
        write(config, "device: cpu\n")
        write(repo / "editgate.yml", "device: cuda\n")
    with deadline(20):
        result = cli("validate", str(repo))
    assert result.exit_code == 2 and "editgate.y" in result.stderr, result.output


# --- 12. what a run prints -------------------------------------------------------------------------------


def test_quiet_silences_third_party_progress_bars(tmp_path, tiny_repo):
    """A GGUF model is converted on first use; transformers' tqdm bar for it stays silent under --quiet."""
    from test_cache_integrity import write_tiny_gguf

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDITGATE_CACHE_DIR": str(tmp_path / "fresh")}
    proc = subprocess.run([sys.executable, "-m", "editgate.cli", "baseline", "--repo", str(tiny_repo()), "--model",
                           str(gguf), "--quiet"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert any((tmp_path / "fresh" / "models").iterdir())  # it was converted in this run
    assert proc.stderr == "", proc.stderr


def test_a_quiet_run_prints_nothing_but_the_verdict(tmp_path, tiny_repo):
    repo = tiny_repo()
    env = {**os.environ, "PYTHONWARNINGS": "default", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "editgate.cli", "run", "--repo", str(repo), "--out",
                           str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    assert proc.stdout.splitlines()[0] == "editgate: passed"
