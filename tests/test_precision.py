"""bfloat16 on the CPU goes through the same gate as float32 (and as bf16 on a GPU): same verdict and
culprit, perplexities within a stated tolerance."""

from __future__ import annotations

import math

from test_collapse import gate, repo_with

# bf16 keeps 8 bits of mantissa: per-token log-probabilities move by ~1e-2 relative, the corpus
# perplexity of a tiny random model by well under this
PERPLEXITY_TOLERANCE = 0.02


def test_bfloat16_gives_the_float32_verdict_within_tolerance(tiny_repo, tmp_path):
    repo = repo_with(tiny_repo, "precision")
    code32, fp32 = gate(repo, tmp_path / "fp32", "--dtype", "float32", "--no-cache")
    code16, bf16 = gate(repo, tmp_path / "bf16", "--dtype", "bfloat16", "--no-cache")
    assert bf16["environment"]["dtype"] == "bfloat16" and fp32["environment"]["dtype"] == "float32"
    assert code32 == code16 == 1 and fp32["verdict"] == bf16["verdict"] == "failed"
    assert fp32["culprit"]["id"] == bf16["culprit"]["id"] == "extreme"
    base32, base16 = fp32["baseline"]["perplexity"], bf16["baseline"]["perplexity"]
    assert math.isfinite(base16) and abs(base16 / base32 - 1) < PERPLEXITY_TOLERANCE
    for e32, e16 in zip(fp32["edits"], bf16["edits"]):
        assert e32["status"] == e16["status"], (e32["id"], e32["ratio"], e16["ratio"])
    # the zero updates before the culprit leave bf16 weights (and so perplexity) exactly as they were
    assert [e["ratio"] for e in bf16["edits"][:2]] == [1.0, 1.0]
