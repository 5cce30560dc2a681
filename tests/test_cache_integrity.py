"""The on-disk cache under concurrency and crashes: every kind of entry (baseline JSON, statistics
tensors, the converted model directory) is damaged for real on disk (truncated, a byte flipped, an
older editgate's format) and must be detected, reported once, and rebuilt with the same value; a
writer SIGKILLed mid-write and two writers racing must never leave anything a reader trusts wrongly."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from editgate import cachefile
from editgate.baseline import BaselineCache
from editgate.methods.statistics import cached_second_moments, cached_tensor, stats_path
from editgate.models import _converted_gguf

REPO_ROOT = Path(__file__).resolve().parents[1]
DAMAGES = ("truncated", "flipped", "old-format")


class Log(list):
    """Collects log lines; `damage()` are the cache's damage reports among them."""

    def __call__(self, message: str) -> None:
        self.append(message)

    def damage(self) -> list[str]:
        return [m for m in self if "is damaged" in m]


def damage(path: Path, how: str, old_format: bytes) -> None:
    """Damage a cache file in place the way a killed copy, a bad sector or an old version would."""
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        at = len(data) - 7  # inside the payload, past the header
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:])
    elif how == "old-format":
        path.write_bytes(old_format)  # what editgate wrote before: valid content, no integrity header
    else:
        raise ValueError(how)


def python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# --- the file format ------------------------------------------------------------------------------


def test_an_entry_round_trips_with_the_users_permissions(tmp_path):
    path = tmp_path / "a" / "entry.bin"
    before = os.umask(0o027)
    try:
        cachefile.write_bytes(path, b"payload \x00\xff")
    finally:
        os.umask(before)
    log = Log()
    assert cachefile.read_bytes(path, log) == b"payload \x00\xff"
    assert path.stat().st_mode & 0o777 == 0o640  # the umask's, not mkstemp's 0600
    assert cachefile.read_bytes(tmp_path / "absent", log) is None
    assert log == [] and os.listdir(path.parent) == ["entry.bin"]


def test_only_stale_partials_are_cleaned(tmp_path):
    fresh, stale = tmp_path / ".partial-fresh", tmp_path / ".partial-stale"
    fresh.write_bytes(b"x")
    (stale / "sub").mkdir(parents=True)
    old = time.time() - 2 * cachefile.STALE_SECONDS
    os.utime(stale, (old, old))
    cachefile.write_bytes(tmp_path / "entry", b"y")  # a write cleans what dead writers left
    assert fresh.exists() and not stale.exists()


# --- each kind of entry: damaged, reported, rebuilt -------------------------------------------------


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_baseline_entry_is_reported_and_measured_again(tmp_path, how):
    log = Log()
    cache = BaselineCache(tmp_path, "fp", log=log)
    value = {"perplexity": 12.375, "tokens": 4096, "per_text": [1.5, 2.25]}
    cache.put("perplexity", ["ids", 1], value)
    path = cache._path("perplexity", ["ids", 1])
    assert cache.get("perplexity", ["ids", 1]) == value and log == []

    damage(path, how, old_format=json.dumps({**value, "perplexity": 1.0}).encode())
    assert cache.get("perplexity", ["ids", 1]) is None  # not trusted, even where it still parses
    assert len(log.damage()) == 1 and str(path) in log.damage()[0] and "rebuilding it" in log.damage()[0]
    assert not path.exists() and cache.hits == ["perplexity"]

    cache.put("perplexity", ["ids", 1], value)  # what the gate does after measuring again
    assert cache.get("perplexity", ["ids", 1]) == value and len(log.damage()) == 1


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_derived_tensor_is_reported_and_built_again(tmp_path, how):
    log, builds = Log(), []
    value = torch.arange(64, dtype=torch.float32).reshape(8, 8) / 7

    def build():
        builds.append(1)
        return value.clone()

    assert torch.equal(cached_tensor(tmp_path, "fp", "builtin:wiki", "nullspace-1", build, log=log), value)
    assert torch.equal(cached_tensor(tmp_path, "fp", "builtin:wiki", "nullspace-1", build, log=log), value)
    assert len(builds) == 1 and log == []
    (path,) = (tmp_path / "stats" / "fp" / "derived").iterdir()

    old = tmp_path / "old.pt"
    torch.save(value * 2, old)  # a loadable tensor file, but without the header: never trusted
    damage(path, how, old_format=old.read_bytes())
    again = cached_tensor(tmp_path, "fp", "builtin:wiki", "nullspace-1", build, log=log)
    assert torch.equal(again, value) and len(builds) == 2
    assert len(log.damage()) == 1 and str(path) in log.damage()[0]
    assert torch.equal(cachefile.read_tensor(path, log), value) and len(log.damage()) == 1


# --- a real (tiny) GGUF model: conversion and key statistics ----------------------------------------


def write_tiny_gguf(path: Path, hidden: int = 16, layers: int = 2, ff: int = 32, heads: int = 2) -> Path:
    """A llama GGUF of a few KB (character vocabulary, random weights) that transformers loads."""
    import gguf

    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [" ", "."]
    tokens = ["<s>", "</s>", "<unk>", *chars, "ab"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(2)
    rng = np.random.default_rng(0)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(len(tokens), hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("output.weight", weight(len(tokens), hidden))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(hidden, hidden))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(ff, hidden))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(ff, hidden))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(hidden, ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def file_digests(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_converted_model_is_reported_and_converted_again(tiny_gguf, tmp_path, how):
    log = Log()
    target, from_cache, _ = _converted_gguf(tiny_gguf, tmp_path, log)
    assert not from_cache and (target / cachefile.MANIFEST).is_file()
    good = file_digests(target)
    assert _converted_gguf(tiny_gguf, tmp_path, log)[:2] == (target, True) and log.damage() == []

    weights = target / "model.safetensors"
    if how == "old-format":  # an older editgate's copy: complete, but without a manifest
        (target / cachefile.MANIFEST).unlink()
    else:
        data = weights.read_bytes()
        cut = len(data) // 2
        flipped = data[:cut] + bytes([data[cut] ^ 0x20]) + data[cut + 1:]
        weights.write_bytes(data[:cut] if how == "truncated" else flipped)
    assert _converted_gguf(tiny_gguf, tmp_path, log)[:2] == (target, False)  # converted again
    assert len(log.damage()) == 1 and str(target) in log.damage()[0]
    assert file_digests(target) == good  # the same conversion, byte for byte
    assert _converted_gguf(tiny_gguf, tmp_path, log)[:2] == (target, True)
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # nothing left aside


def test_damaged_key_statistics_are_reported_and_computed_again(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target, _, _ = _converted_gguf(tiny_gguf, tmp_path / "convert", lambda _m: None)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(target)
    reads: list[int] = []

    def texts():
        reads.append(1)
        return ["the cat sat on the mat.", "a dog ran.", "abc abc abc"]

    def moments(log):
        return cached_second_moments(model, tokenizer, [0, 1], cache_dir=tmp_path, fingerprint="fp",
                                     corpus="builtin:wiki", texts_fn=texts, samples=3, max_tokens=32, log=log)

    log = Log()
    first = moments(log)
    assert len(reads) == 1 and moments(log).keys() == first.keys() and len(reads) == 1
    path = stats_path(tmp_path, "fp", "builtin:wiki", 3, 32, 1)
    damage(path, "flipped", b"")
    again = moments(log)
    assert len(reads) == 2 and len(log.damage()) == 1 and str(path) in log.damage()[0]
    assert all(torch.equal(again[layer], first[layer]) for layer in (0, 1))
    assert torch.equal(cachefile.read_tensor(path, log), first[1])


# --- directory entries: the manifest check and the rename race -------------------------------------


def staged(parent: Path, content: bytes) -> Path:
    staging = cachefile.make_staging_directory(parent)
    (staging / "config.json").write_text('{"a": 1}')
    (staging / "sub").mkdir()
    (staging / "sub" / "weights.bin").write_bytes(content)
    return staging


@pytest.mark.parametrize("how", ["truncated", "flipped", "missing", "unexpected", "no-manifest"])
def test_a_damaged_directory_entry_fails_verification_and_is_removed(tmp_path, how):
    log, target = Log(), tmp_path / "model"
    cachefile.publish_directory(staged(tmp_path, bytes(range(256)) * 64), target, log)
    assert cachefile.verify_directory(target, log) and log == []
    assert not any(p.name.startswith(cachefile.PARTIAL) for p in tmp_path.iterdir())
    weights = target / "sub" / "weights.bin"
    data = weights.read_bytes()
    if how == "truncated":
        weights.write_bytes(data[:-100])
    elif how == "flipped":  # same size: only the sha256 catches it
        weights.write_bytes(data[:5000] + bytes([data[5000] ^ 0x80]) + data[5001:])
    elif how == "missing":
        weights.unlink()
    elif how == "unexpected":
        (target / "pytorch_model.bin").write_bytes(b"stray")
    else:
        (target / cachefile.MANIFEST).unlink()
    assert not cachefile.verify_directory(target, log)
    assert len(log.damage()) == 1 and str(target) in log.damage()[0]
    assert list(tmp_path.iterdir()) == []  # moved aside and removed, no half-deleted copy left
    assert not cachefile.verify_directory(target, log) and len(log.damage()) == 1  # absent is not damage


def test_the_loser_of_the_rename_uses_the_winners_copy_or_replaces_a_damaged_one(tmp_path):
    log, target = Log(), tmp_path / "model"
    cachefile.publish_directory(staged(tmp_path, b"winner"), target, log)
    cachefile.publish_directory(staged(tmp_path, b"loser"), target, log)  # lost: keeps the winner's
    assert (target / "sub" / "weights.bin").read_bytes() == b"winner" and log == []
    (target / "sub" / "weights.bin").write_bytes(b"WINNER")
    cachefile.publish_directory(staged(tmp_path, b"second"), target, log)  # the winner's was damaged
    assert (target / "sub" / "weights.bin").read_bytes() == b"second" and len(log.damage()) == 1
    assert cachefile.verify_directory(target, log) and [p.name for p in tmp_path.iterdir()] == ["model"]


RACE_DIRECTORY = """
import sys, time
from pathlib import Path
from editgate import cachefile
parent, go, tag = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
for round in range(20):
    staging = cachefile.make_staging_directory(parent)
    (staging / "weights.bin").write_bytes(tag.encode() * 100000)
    while not (go / str(round)).exists():
        time.sleep(0.001)
    cachefile.publish_directory(staging, parent / f"model-{round}", print)
    assert cachefile.verify_directory(parent / f"model-{round}", print)
print("ok")
"""


def test_two_processes_converting_at_once_both_succeed(tmp_path):
    go = tmp_path / "go"
    go.mkdir()
    parent = tmp_path / "models"
    parent.mkdir()
    procs = [python(RACE_DIRECTORY, str(parent), str(go), tag) for tag in "ab"]
    time.sleep(1.0)  # both imported and waiting
    for round in range(20):
        (go / str(round)).touch()
        time.sleep(0.02)
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out.strip() == "ok", err
        assert "damaged" not in out
    log = Log()
    for round in range(20):
        assert cachefile.verify_directory(parent / f"model-{round}", log)
        assert (parent / f"model-{round}" / "weights.bin").read_bytes() in (b"a" * 100000, b"b" * 100000)
    assert log == [] and sorted(p.name for p in parent.iterdir()) == sorted(f"model-{r}" for r in range(20))


# --- crashes and concurrent writers of one file -------------------------------------------------------

WRITER = """
import os, sys, time
import torch
from editgate import cachefile
path, value, count, side = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
while len(sys.argv) > 5 and not os.path.exists(sys.argv[5]):  # start together with the other writer
    time.sleep(0.001)
def fail(message):
    raise SystemExit("reader saw damage during concurrent writes: " + message)
racing = len(sys.argv) > 5
for i in range(count):
    cachefile.write_tensor(path, torch.full((side, side), value + i))  # side 2048: 16 MB
    print(i, flush=True)
    if racing:  # every read between the two writers' renames must find a whole entry
        seen = cachefile.read_tensor(path, fail)
        assert seen is not None and seen.shape == (side, side) and bool((seen == seen[0, 0]).all())
"""


def test_a_writer_killed_mid_write_leaves_a_valid_entry_or_none(tmp_path):
    path = tmp_path / "stats" / "layer1.pt"
    log = Log()
    for attempt, phase in enumerate((0.6, 0.75, 0.9)):
        proc = python(WRITER, str(path), str(attempt * 1000), "100000", "2048")
        proc.stdout.readline()  # one entry published
        start = time.perf_counter()
        proc.stdout.readline()
        proc.stdout.readline()
        cycle = (time.perf_counter() - start) / 2
        # a cycle is torch.save into memory, then write_bytes (digest, write, fsync, rename), then the
        # print: late in the cycle is mid-write
        time.sleep(phase * cycle)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        value = cachefile.read_tensor(path, log)  # a whole entry: the last one renamed into place
        assert value is not None and value.shape == (2048, 2048) and bool((value == value[0, 0]).all())
        assert value[0, 0] >= attempt * 1000
        assert log.damage() == []  # what was renamed into place is always whole
        partials = [p for p in path.parent.iterdir() if p.name.startswith(cachefile.PARTIAL)]
        for partial in partials:  # a half-written temporary is never read as the entry...
            seen = cachefile.read_tensor(partial, Log())  # ...and would not be trusted if it were
            assert seen is None or bool((seen == seen[0, 0]).all())
        cachefile.clean_partials(path.parent, older_than=0)
        assert [p.name for p in path.parent.iterdir()] == ["layer1.pt"]
    assert cachefile.read_tensor(path, log) is not None


def test_two_processes_writing_one_entry_at_once_both_succeed(tmp_path):
    path, go = tmp_path / "stats" / "layer1.pt", tmp_path / "go"
    procs = [python(WRITER, str(path), value, "15", "1024", str(go)) for value in ("0", "1000")]
    time.sleep(1.0)  # both imported and waiting
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.split() == [str(i) for i in range(15)]
    log = Log()
    value = cachefile.read_tensor(path, log)
    assert log == [] and value is not None and float(value[0, 0]) in (14.0, 1014.0)
    assert bool((value == value[0, 0]).all())
    assert [p.name for p in path.parent.iterdir()] == ["layer1.pt"]
