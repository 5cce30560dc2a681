"""editgate: a continuous-integration gate for knowledge edits to language models.

The Python API (names load on first use, so `import editgate` stays light for the CLI):

    import editgate
    loaded = editgate.load_model("builtin:smollm2-135m", device="cpu", cache_dir="~/.cache/editgate")
    edits = editgate.load_manifests(["edits/landmarks.yaml"], root=".", default_method="rome")
    session = editgate.EditSession(loaded, cache_dir="~/.cache/editgate")
    session.apply(edits[:1])        # one update; session.model is the model to evaluate now
    session.undo_to(0)              # back to the base weights, bit for bit

`editgate.run_gate(repo)` runs the whole gate of a repository and returns its report document;
`editgate.load_result("editgate-report")` loads what a run left there as an EditSession.
"""

from __future__ import annotations

import importlib
from typing import Any

from editgate.threads import configure_openmp

configure_openmp()  # before anything imports torch: OpenMP reads its settings when torch loads it

__version__ = "0.1.0"

_API = {"load_model": "editgate.models", "EditSession": "editgate.session", "Edit": "editgate.manifests",
        "load_manifests": "editgate.manifests", "run_gate": "editgate.run", "load_result": "editgate.results"}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'editgate' has no attribute {name!r}")
