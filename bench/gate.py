"""The whole gate on sequential CounterFact edits, with and without the check's savings (issue 7).

    python bench/gate.py                     # 50 ROME edits, a check after every edit, both variants
    python bench/gate.py --edits 10 --variants fast --samples 200 --max-tokens 256
    python bench/gate.py --variants fast --policy builtin:cpu --out gate-cpu-policy.json

Writes a gate repository under a temporary directory (the embedded model, the first N records of
../shared/data/counterfact-2k.json as one manifest, a check after every edit on the demo's sample of
40 builtin:wiki texts of up to 128 tokens unless --samples/--max-tokens say otherwise, no benchmark
suite; or, with --policy builtin:NAME, that packaged policy as it is: its sample, benchmark suite and edit
minimums) and runs `editgate run` on it in a subprocess per variant:
  - fast: the defaults (prefix cache and early stopping on);
  - full: `prefix_cache: false`, `early_stop: false` (every check scores the whole sample, whole model).
Both use the warm cache (model, statistics, baseline), as a CI runner does after its first run.
Prints wall time, the gate's own time split (edits, checks), checks stopped early, and whether the
verdicts and statuses agree; writes bench/results/gate.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _common import SHARED_DATA, machine, print_table, save_json

POLICY = """\
perplexity:
  corpus: builtin:wiki
  samples: {samples}
  max_tokens: {max_tokens}
  check_every: 1
  early_stop: {fast}
  prefix_cache: {fast}
benchmarks:
  suite: none
edits:
  min_efficacy: 0.0
  min_generalization: 0.0
  min_locality: 0.0
"""


def policy_text(fast: bool, samples: int, max_tokens: int, builtin: str | None) -> str:
    """The bench's own policy, or a packaged one with the check's savings switched to `fast`."""
    if builtin is None:
        return POLICY.format(fast=str(fast).lower(), samples=samples, max_tokens=max_tokens)
    from editgate.policy import builtin_policy_path

    policy = yaml.safe_load(builtin_policy_path(builtin.removeprefix("builtin:")).read_text(encoding="utf-8"))
    policy["perplexity"].update(early_stop=fast, prefix_cache=fast)
    return yaml.safe_dump(policy, sort_keys=False)


def write_repo(root: Path, edits: int, policy: str) -> Path:
    records = json.loads((SHARED_DATA / "counterfact-2k.json").read_text(encoding="utf-8"))[:edits]
    (root / "edits").mkdir(parents=True)
    (root / "policies").mkdir()
    (root / "edits" / "counterfact.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    (root / "policies" / "default.yaml").write_text(policy, encoding="utf-8")
    (root / "editgate.yaml").write_text("model: builtin:smollm2-135m\nmethod: rome\nmanifests: edits/*.json\n"
                                        "policy: policies/default.yaml\n", encoding="utf-8")
    return root


def run_variant(name: str, edits: int, policy: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        repo = write_repo(Path(tmp) / "repo", edits, policy)
        out = Path(tmp) / "report"
        # warm the cache as a CI runner's earlier runs would (model, statistics, baseline): not timed
        subprocess.run([sys.executable, "-m", "editgate", "baseline", "--repo", str(repo), "--quiet"], check=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "editgate", "run", "--repo", str(repo), "--out", str(out),
                               "--quiet"], capture_output=True, text=True)
        wall = time.perf_counter() - start
        doc = json.loads((out / "report.json").read_text(encoding="utf-8"))
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{name}: editgate run exited {proc.returncode}: {proc.stdout[-2000:]}")
    checks = [e["check"] for e in doc["edits"] if e.get("check")]
    return {"variant": name, "exit_code": proc.returncode, "wall_seconds": wall, "verdict": doc["verdict"],
            "reasons": doc.get("reasons", []),
            "statuses": [e["status"] for e in doc["edits"]], "ratios": [e["ratio"] for e in doc["edits"]],
            "edit_seconds": sum(e["seconds"]["edit"] for e in doc["edits"]),
            "check_seconds": sum(e["seconds"]["check"] for e in doc["edits"]), "checks": len(checks),
            "stopped_early": sum(c["stopped_early"] for c in checks),
            "texts_scored": sum(c["texts"] for c in checks), "texts_total": sum(c["of"] for c in checks),
            "from_layer": sorted({c["from_layer"] for c in checks}), "timings": doc.get("timings")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--variants", nargs="+", default=["fast", "full"], choices=["fast", "full"])
    parser.add_argument("--samples", type=int, default=40, help="check texts (the demo's 40; the default policy's 200)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--policy", default=None, help="builtin:NAME: gate with that packaged policy as it is")
    parser.add_argument("--out", default="gate.json")
    args = parser.parse_args()
    env = machine()
    results = []
    for name in args.variants:
        print(f"{name}: {args.edits} edits ...", file=sys.stderr)
        policy = policy_text(name == "fast", args.samples, args.max_tokens, args.policy)
        results.append(run_variant(name, args.edits, policy))
    rows = [[r["variant"], r["verdict"], r["wall_seconds"] / 60, r["edit_seconds"] / r["checks"],
             r["check_seconds"] / r["checks"], f"{r['stopped_early']}/{r['checks']}",
             f"{r['texts_scored']}/{r['texts_total']}", ",".join(map(str, r["from_layer"]))] for r in results]
    table = print_table(["variant", "verdict", "wall min", "s/edit", "s/check", "checks stopped early",
                         "texts scored", "first block run"], rows)
    agree = len({tuple(r["statuses"]) for r in results}) == 1
    print(f"statuses agree across variants: {agree}")
    path = save_json(args.out, {"command": "python bench/gate.py " + " ".join(sys.argv[1:]), "machine": env,
                                "edits": args.edits, "policy": args.policy or "the bench's",
                                # the bench's own sample; a packaged policy brings its own
                                "samples": None if args.policy else args.samples,
                                "max_tokens": None if args.policy else args.max_tokens,
                                "results": results, "statuses_agree": agree, "table": table})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
