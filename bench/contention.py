"""A ROME edit and a perplexity check alone and beside one CPU-bound process (issue 17).

    python bench/contention.py                # both OpenMP settings, alone and beside each competitor
    python bench/contention.py --texts 30     # a shorter check

Each measurement runs in a fresh worker process (OpenMP reads its settings when torch is imported) on
the embedded model with editgate's thread count (the CPUs the process may use), under one OpenMP
wait setting given in its environment:
  - "passive": OMP_WAIT_POLICY=PASSIVE, a waiting thread sleeps at once;
  - "short spin": GOMP_SPINCOUNT=1000, it spins about a thousand times, then sleeps;
  - "torch default": neither, libgomp's default (it spins 300,000 times before it sleeps).
`editgate/threads.py` names the one editgate sets.
The worker makes one ROME edit to warm the set-up (context prefixes, inverse covariance), then times
one more edit and one full perplexity pass over --texts texts of builtin:wiki. The competitors:
  - "busy loop": one single-threaded Python process spinning (`while True: pass`);
  - "torch job": another process multiplying matrices on as many threads as there are CPUs (what a
    second editgate run does to the cores).
Slowdown = contended seconds / the same setting's seconds alone, measured in this run. On two cores
a fair share is 2x. Run it alone on the machine: other load is what it measures. Prints a table and
writes bench/results/contention.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMPETITORS = {
    "busy loop": [sys.executable, "-c", "while True: pass"],
    "torch job": [sys.executable, "-c", "import torch\na = torch.randn(1024, 1024)\nwhile True: a @ a"],
}
SETTINGS = {"passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "short spin": {"GOMP_SPINCOUNT": "1000"},
            "torch default": {}}


def worker(texts: int) -> dict:
    """One measurement in this process (run as `--worker`), torch imported first: the environment's
    OpenMP settings are the ones it starts with."""
    sys.path.insert(0, str(HERE))
    import torch
    from _common import CACHE, counterfact_edits, load_embedded

    from editgate.corpora import sample_texts
    from editgate.metrics.perplexity import PerplexitySample, perplexity
    from editgate.session import EditSession

    loaded = load_embedded()
    session = EditSession(loaded, cache_dir=CACHE, log=lambda _m: None)
    edits = counterfact_edits(2, "rome")
    session.apply(edits[:1])  # set-up: context prefixes, statistics, inverse covariance
    start = time.perf_counter()
    session.apply(edits[1:2])
    edit_seconds = time.perf_counter() - start
    sample = PerplexitySample.from_texts(loaded.tokenizer, sample_texts("builtin:wiki", "perplexity", texts, 0),
                                         256, 4096, 0)
    start = time.perf_counter()
    perplexity(session.model, sample)
    return {"edit_seconds": edit_seconds, "check_seconds": time.perf_counter() - start,
            "threads": torch.get_num_threads()}


def measure(setting: str, competitor: str | None, texts: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(SETTINGS[setting])
    rival = subprocess.Popen(COMPETITORS[competitor]) if competitor else None
    try:
        time.sleep(1.0 if rival else 0.0)
        out = subprocess.run([sys.executable, __file__, "--worker", "--texts", str(texts)], env=env,
                             check=True, capture_output=True, text=True).stdout
    finally:
        if rival:
            rival.kill()
            rival.wait()
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=60)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.texts)))
        return
    sys.path.insert(0, str(HERE))
    from _common import machine, print_table, save_json

    rows, results = [], []
    for setting in SETTINGS:
        alone = measure(setting, None, args.texts)
        results.append({"setting": setting, "competitor": None, **alone})
        rows.append([setting, "alone", alone["threads"], alone["edit_seconds"], None, alone["check_seconds"], None])
        for competitor in COMPETITORS:
            busy = measure(setting, competitor, args.texts)
            edit_x = busy["edit_seconds"] / alone["edit_seconds"]
            check_x = busy["check_seconds"] / alone["check_seconds"]
            results.append({"setting": setting, "competitor": competitor, **busy,
                            "edit_slowdown": edit_x, "check_slowdown": check_x})
            rows.append([setting, f"beside a {competitor}", busy["threads"], busy["edit_seconds"], edit_x,
                         busy["check_seconds"], check_x])
    print_table(["setting", "load", "threads", "edit s", "edit slowdown", "check s", "check slowdown"], rows)
    from editgate.threads import OPENMP_SETTINGS

    path = save_json("contention.json", {"machine": machine(), "texts": args.texts, "settings": SETTINGS,
                                         "editgate_sets": OPENMP_SETTINGS, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
