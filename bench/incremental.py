"""A pull request that adds one edit to a 50-edit history: incremental run against a full replay (issue 17).

    python bench/incremental.py                 # 50 CounterFact edits + 1, the demo's policy
    python bench/incremental.py --edits 20      # a shorter history

A repository on the embedded model (SmolLM2-135M, CPU) with the demo's policy (examples/demo: 40
texts of 128 tokens checked after every edit, builtin:small at the end) and --edits CounterFact edits
of ../shared/data in one manifest, gated through the CLI in fresh processes, one after another:
  1. the base branch: --edits edits (fills the cache: baselines, set-up, prefix states, the stored state);
  2. the pull request adds one edit in a second manifest: the incremental run restores the state of 1;
  3. the same pull request replayed in full: stored states removed first, baselines, set-up and prefix
     states kept, so the difference is only the edits and checks the state saves.
Wall time includes starting Python and loading the model. The verdict, culprit and every edit's
status and ratio of 2 and 3 must be equal (the bench exits 1 when not). Prints a table and writes
bench/results/incremental.json. Run it alone: it is CPU-bound.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _common import ROOT, counterfact_edits, machine, print_table, save_json


def manifest(edits) -> str:
    items = [{"id": e.id, "prompt": e.prompt, "subject": e.subject, "target": e.target,
              "ground_truth": e.ground_truth, "paraphrases": list(e.paraphrases),
              "locality": [{"prompt": c.prompt, "answer": c.answer} for c in e.locality]} for e in edits]
    return yaml.safe_dump({"edits": items}, sort_keys=False, allow_unicode=True)


def make_repo(root: Path, edits) -> Path:
    repo = root / "repo"
    shutil.copytree(ROOT / "examples" / "demo" / "policies", repo / "policies")
    (repo / "editgate.yaml").write_text(
        "model: builtin:smollm2-135m\ndevice: cpu\ndtype: auto\nmethod: rome\n"
        "manifests: edits/**/*.yaml\npolicy: policies/default.yaml\n")
    (repo / "edits").mkdir()
    (repo / "edits" / "2026-01-01-history.yaml").write_text(manifest(edits), encoding="utf-8")
    return repo


def gate(repo: Path, out: Path, cache: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "editgate", "run", "--repo", str(repo), "--out", str(out), "--quiet"],
                   env={**os.environ, "EDITGATE_CACHE_DIR": str(cache)}, check=False)
    return time.perf_counter() - start, json.loads((out / "report.json").read_text())


def outcome(report: dict) -> dict:
    return {"verdict": report["verdict"], "culprit": report["culprit"],
            "edits": [(e["id"], e["status"], e["ratio"]) for e in report["edits"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache directory (default: a copy of ~/.cache/editgate's models in a temporary one)")
    args = parser.parse_args()
    edits = counterfact_edits(args.edits + 1, "rome")
    with tempfile.TemporaryDirectory(prefix="editgate-incremental-") as tmp:
        root = Path(tmp)
        cache = args.cache or root / "cache"
        models = Path(os.environ.get("EDITGATE_CACHE_DIR", Path.home() / ".cache" / "editgate")) / "models"
        if args.cache is None and models.is_dir():  # the converted embedded model: no conversion in the timings
            shutil.copytree(models, cache / "models", symlinks=True)
        repo = make_repo(root, edits[:-1])
        base_seconds, base = gate(repo, root / "base", cache)
        (repo / "edits" / "2026-02-01-pull-request.yaml").write_text(manifest(edits[-1:]), encoding="utf-8")
        incremental_seconds, incremental = gate(repo, root / "incremental", cache)
        shutil.rmtree(cache / "states", ignore_errors=True)
        replay_seconds, replay = gate(repo, root / "replay", cache)
    same = outcome(incremental) == outcome(replay)
    # a warm run's first edit against the others: set-up (context prefixes, inverse covariance) comes
    # from the cache before the first edit, not inside it
    edit_seconds = [e["seconds"]["edit"] for e in replay["edits"]]
    first_edit_ratio = edit_seconds[0] / statistics.median(edit_seconds[1:])
    rows = [["base branch (fills the cache)", args.edits, None, base_seconds, None, base["verdict"]],
            ["pull request, incremental", args.edits + 1, (incremental.get("restored") or {}).get("edits"),
             incremental_seconds, incremental_seconds / replay_seconds, incremental["verdict"]],
            ["pull request, full replay", args.edits + 1, None, replay_seconds, 1.0, replay["verdict"]]]
    print_table(["run", "edits", "restored", "wall s", "of replay", "verdict"], rows)
    print(f"incremental verdict, culprit and every status and ratio equal to the replay's: {same}")
    print(f"full replay (warm set-up): first edit {edit_seconds[0]:.2f}s, "
          f"{first_edit_ratio:.2f}x the median later edit")
    timings = {name: report["timings"] for name, report in
               (("base", base), ("incremental", incremental), ("replay", replay))}
    seconds = {"base": base_seconds, "incremental": incremental_seconds, "replay": replay_seconds}
    path = save_json("incremental.json", {
        "machine": machine(), "edits": args.edits, "seconds": seconds,
        "ratio": incremental_seconds / replay_seconds, "same_outcome": same, "first_edit_ratio": first_edit_ratio,
        "restored": incremental.get("restored"),
        "timings": timings, "outcome": {"incremental": outcome(incremental), "replay": outcome(replay)}})
    print(f"wrote {path}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
