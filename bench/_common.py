"""Shared set-up for the benchmarks: the embedded model, CounterFact edits, output tables and JSON."""

from __future__ import annotations

import json
import os
import platform
import resource
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(os.environ.get("EDITGATE_CACHE", Path.home() / ".cache" / "editgate"))


def load_embedded(threads: int | None = None):
    from editgate.run import quiet_libraries
    from editgate.models import load_model, set_threads

    quiet_libraries()
    set_threads(threads)
    return load_model("builtin:smollm2-135m", cache_dir=CACHE, log=lambda _m: None)


def counterfact_edits(n: int, method: str):
    """The first `n` CounterFact records of ../shared/data, read through editgate's manifest loader."""
    from editgate.manifests import load_manifests

    path = SHARED_DATA / "counterfact-2k.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: the benchmarks read ../shared/data beside the repository")
    return load_manifests([path], path.parent, method)[:n]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "cpu": cpu_model(), "threads": torch.get_num_threads(),
            "platform": platform.platform(), "torch": torch.__version__, "python": platform.python_version(),
            "load_average_at_start": os.getloadavg()[0]}


def cpu_model() -> str:
    """The processor's name (figures differ between machines of one kind: say which one ran)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def save_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def print_table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    text = "\n".join(lines)
    print(text)
    return text
