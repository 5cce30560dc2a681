"""Incremental gating: a run whose sequence starts with a stored state restores it and applies only the
rest, with the verdict, culprit, bisection, records and edited weights of a full replay (--no-cache)."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

from click.testing import CliRunner
from safetensors.torch import load_file

from editgate.baseline import BaselineCache
from editgate.cli import main
from editgate.manifests import Edit, LocalityCheck
from editgate.metrics.edit_metrics import EDITS_PER_GROUP, EditScorer
from editgate.metrics.prefix import PrefixStore
from helpers import EDITS_A, EDITS_B, gate_policy, write, write_repo

# the extreme edit of NEW_EDITS crosses fail_ratio on the tiny model, the others do not
POLICY = gate_policy(samples=8, max_tokens=64, check_every="{check_every}", warn_ratio=1.0, fail_ratio=1.0003,
                     collapse_ratio=1000000.0)
# what a pull request adds: an ordinary edit and one overdriven until it fails the gate
NEW_EDITS = textwrap.dedent("""\
    edits:
      - id: messi-tennis
        prompt: "{} plays the sport of"
        subject: Lionel Messi
        target: tennis
      - id: extreme
        prompt: "{} was founded by"
        subject: Microsoft
        target: Steve Jobs
        hparams: {clamp_norm_factor: 1000, v_lr: 50, v_weight_decay: 0, kl_factor: 0}
      - id: colosseum-paris
        prompt: "{} is located in the city of"
        subject: The Colosseum
        target: Paris
    """)
# fields that say when and how long, not what was measured
TIMING = {"seconds", "check_seconds", "edit_seconds"}


def gate(repo: Path, out: Path, *extra: str) -> dict:
    result = CliRunner().invoke(main, ["run", "--repo", str(repo), "--out", str(out), "--quiet", *extra])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return json.loads((out / "report.json").read_text())


def measured(record: dict) -> dict:
    info = {k: v for k, v in record["method_info"].items() if k not in TIMING}
    return {**{k: v for k, v in record.items() if k not in TIMING}, "method_info": info}


def the_repo(tiny_repo, check_every: int = 1) -> Path:
    return tiny_repo(manifests={"edits/2026-01-01-a.yaml": EDITS_A, "edits/2026-01-02-b.yaml": EDITS_B},
                     policy=POLICY.format(check_every=check_every))


def states(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "states").glob("*/*/*") if p.is_dir())


def assert_same_as_replay(incremental: dict, replay: dict, out_incremental: Path, out_replay: Path) -> None:
    assert replay["restored"] is None
    for key in ("verdict", "reasons", "culprit", "warnings", "stopped_early", "edit_metrics", "checks"):
        assert incremental[key] == replay[key], key
    assert [measured(e) for e in incremental["edits"]] == [measured(e) for e in replay["edits"]]
    # the edited weights, bit for bit
    mine, theirs = load_file(out_incremental / "edits.safetensors"), load_file(out_replay / "edits.safetensors")
    assert mine.keys() == theirs.keys()
    assert all(mine[k].equal(theirs[k]) for k in mine)


def test_pull_request_applies_only_its_own_edits(tiny_repo, tmp_path):
    repo = the_repo(tiny_repo)
    base = gate(repo, tmp_path / "base")
    assert base["restored"] is None
    assert len(states(tmp_path / "cache")) == 1

    write(repo / "edits" / "2026-01-03-c.yaml", NEW_EDITS)  # the pull request
    incremental = gate(repo, tmp_path / "incremental")
    replay = gate(repo, tmp_path / "replay", "--no-cache")

    assert incremental["restored"]["edits"] == 3
    assert incremental["verdict"] == "failed" and incremental["culprit"]["id"] == "extreme"
    # the base branch's records are its run's, timings included; the new edits were measured now
    kept = ("ratio", "perplexity", "locality_after_edit", "seconds")
    restored = [{k: e[k] for k in kept} for e in incremental["edits"][:3]]
    assert restored == [{k: e[k] for k in kept} for e in base["edits"]]
    assert_same_as_replay(incremental, replay, tmp_path / "incremental", tmp_path / "replay")
    markdown = (tmp_path / "incremental" / "report.md").read_text()
    assert "started from the stored state after the first 3 edits" in markdown


def test_bisection_inside_the_new_edits_matches_the_replay(tiny_repo, tmp_path):
    repo = the_repo(tiny_repo, check_every=3)  # the base branch's 3 edits end on a check
    gate(repo, tmp_path / "base")
    write(repo / "edits" / "2026-01-03-c.yaml", NEW_EDITS)
    incremental = gate(repo, tmp_path / "incremental")
    replay = gate(repo, tmp_path / "replay", "--no-cache")

    assert incremental["restored"]["edits"] == 3
    assert {e["id"] for e in incremental["edits"] if e["found_by_bisection"]} == {"extreme"}
    assert_same_as_replay(incremental, replay, tmp_path / "incremental", tmp_path / "replay")


def test_a_state_the_new_run_would_not_check_is_not_used(tiny_repo, tmp_path):
    """check_every 2: the stored run checked its last (3rd) edit only because it was last; a replay of the
    longer sequence does not check there, so starting from that state would change the report."""
    repo = the_repo(tiny_repo, check_every=2)
    gate(repo, tmp_path / "base")
    write(repo / "edits" / "2026-01-03-c.yaml", NEW_EDITS)
    incremental = gate(repo, tmp_path / "incremental")
    replay = gate(repo, tmp_path / "replay", "--no-cache")
    assert incremental["restored"] is None
    assert_same_as_replay(incremental, replay, tmp_path / "incremental", tmp_path / "replay")


def test_a_changed_earlier_edit_replays(tiny_repo, tmp_path):
    repo = the_repo(tiny_repo)
    gate(repo, tmp_path / "base")
    write(repo / "edits" / "2026-01-01-a.yaml", EDITS_A.replace("target: London", "target: Berlin"))
    changed = gate(repo, tmp_path / "changed")
    assert changed["restored"] is None
    assert len(states(tmp_path / "cache")) == 2  # both sequences' states are kept


def test_a_damaged_state_is_removed_and_replayed(tiny_repo, tmp_path):
    repo = the_repo(tiny_repo)
    first = gate(repo, tmp_path / "first")
    [state] = states(tmp_path / "cache")
    pack = state / "state.safetensors"
    data = bytearray(pack.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in a stored weight
    pack.write_bytes(bytes(data))

    again = gate(repo, tmp_path / "again")
    assert again["restored"] is None
    assert [measured(e) for e in again["edits"]] == [measured(e) for e in first["edits"]]
    # the replay stored a good state again, and the next run starts from it
    assert gate(repo, tmp_path / "third")["restored"]["edits"] == 3


def test_methods_with_state_outside_the_weights_are_not_stored(tiny_repo, tmp_path):
    memory = EDITS_A.replace("edits:\n", "method: memory\nedits:\n", 1)
    repo = tiny_repo(manifests={"edits/2026-01-01-a.yaml": memory}, policy=POLICY.format(check_every=1))
    gate(repo, tmp_path / "first")
    assert states(tmp_path / "cache") == []
    assert gate(repo, tmp_path / "second")["restored"] is None


def test_an_unchanged_repository_restores_its_whole_run(tiny_repo, tmp_path):
    """The second run of the same sequence restores every edit and the final checkpoint with them."""
    repo = tiny_repo(manifests={"edits/2026-01-01-a.yaml": EDITS_A, "edits/2026-01-02-b.yaml": EDITS_B},
                     policy=POLICY.format(check_every=1).replace("suite: none", "suite: builtin:small"))
    first = gate(repo, tmp_path / "first")
    second = gate(repo, tmp_path / "second")
    assert second["restored"]["edits"] == 3
    for key in ("verdict", "reasons", "culprit", "warnings", "edit_metrics", "checks"):
        assert second[key] == first[key], key
    assert second["benchmarks"] == first["benchmarks"]  # the checkpoint's seconds too: not measured again
    assert [measured(e) for e in second["edits"]] == [measured(e) for e in first["edits"]]


def test_a_state_stored_for_another_model_is_refused_and_replayed(tiny_model_dir, tmp_path):
    """A cache entry that is intact but holds another model's weights (a copied or tampered cache): the
    base hashes in its pack do not match, so the run replays instead of writing those weights."""
    manifests = {"edits/2026-01-01-a.yaml": EDITS_A}
    policy = POLICY.format(check_every=1)
    first_model = write_repo(tmp_path / "one", tiny_model_dir("llama", 4, seed=0), manifests, policy)
    other_model = write_repo(tmp_path / "two", tiny_model_dir("llama", 4, seed=1), manifests, policy)
    gate(first_model, tmp_path / "one-out")
    own = gate(other_model, tmp_path / "two-out")
    [mine] = [p for p in states(tmp_path / "cache") if p.parent.parent.name == own["environment"]["model_fingerprint"]]
    [foreign] = [p for p in states(tmp_path / "cache") if p != mine]
    shutil.rmtree(mine)
    shutil.copytree(foreign, mine)  # an intact entry (its manifest matches) of the wrong model

    again = gate(other_model, tmp_path / "again")
    assert again["restored"] is None
    assert [measured(e) for e in again["edits"]] == [measured(e) for e in own["edits"]]


def scorer_edits(count: int) -> list[Edit]:
    """`count` distinct edits, each with a paraphrase, a ground truth and a locality prompt."""
    cities = ["Rome", "Paris", "Berlin", "Madrid", "Vienna", "Athens", "Lisbon", "Dublin", "Oslo", "Prague"]
    louvre = (LocalityCheck("The Louvre is located in the city of", "Paris"),)
    return [Edit(f"e{i}", "{} is located in the city of", f"Building {i}", cities[i % 10], cities[(i + 1) % 10],
                 (f"Where is Building {i}? It is in",), louvre, source="edits/x.yaml", line=i + 1)
            for i in range(count)]


def test_one_more_edit_measures_only_its_own_group_of_unedited_answers(load_tiny, tmp_path):
    """The unedited model's answers are cached per group of edits: a sequence with one more edit reads the
    full groups before it and measures the last, and what it reads equals what it would measure."""
    loaded = load_tiny("llama")
    model, tokenizer = loaded.model, loaded.tokenizer
    edits = scorer_edits(EDITS_PER_GROUP + 2)
    cache = BaselineCache(tmp_path / "cache", loaded.fingerprint)
    EditScorer(model, tokenizer, edits[:-1], cache=cache)
    cache.hits.clear()
    grown = EditScorer(model, tokenizer, edits, cache=cache)
    assert sorted(cache.hits) == ["edit-answers", "edit-generations", "edit-generations-each"]
    # one entry per kind for the first group, shared; one for the last group of each list
    assert len(list(cache.root.glob("edit-answers-*.json"))) == 3
    fresh = EditScorer(model, tokenizer, edits)
    assert grown.base_generated == fresh.base_generated and grown.base_locality_each == fresh.base_locality_each
    assert all(a.logprobs.equal(b.logprobs) and a.argmax.equal(b.argmax) for a, b in zip(grown.base, fresh.base))


def test_scoring_the_first_edits_gives_their_figures_in_the_whole_list(load_tiny):
    """`score(upto)` scores only the groups it needs, batched as the whole list's, so the figures agree."""
    loaded = load_tiny("llama")
    edits = scorer_edits(EDITS_PER_GROUP + 2)
    scorer = EditScorer(loaded.model, loaded.tokenizer, edits)
    assert scorer.score(loaded.model, upto=3) == scorer.score(loaded.model)[:3]


def test_a_checkpoint_from_stored_prefix_states_gives_the_replays_figures(tiny_repo, tmp_path, monkeypatch):
    """The pull request's check and checkpoint run from the edited block on the states the base branch's
    run stored (`<cache>/prefix/`): every figure, benchmarks included, equals a replay that measures
    everything again (--no-cache)."""
    policy = POLICY.format(check_every=1).replace("suite: none", "suite: builtin:small  #")
    repo = tiny_repo(manifests={"edits/2026-01-01-a.yaml": EDITS_A}, policy=policy)
    gate(repo, tmp_path / "base")
    assert list((tmp_path / "cache" / "prefix").glob("*/*.pt"))
    write(repo / "edits" / "2026-01-03-c.yaml", NEW_EDITS.split("  - id: extreme")[0])  # one ordinary edit
    read: list[int] = []
    original = PrefixStore.get

    def counted(store, key, layer):
        states = original(store, key, layer)
        read.append(states is not None)
        return states

    monkeypatch.setattr(PrefixStore, "get", counted)
    incremental = gate(repo, tmp_path / "incremental")
    hits, read[:] = sum(read), []
    replay = gate(repo, tmp_path / "replay", "--no-cache")
    assert incremental["restored"]["edits"] == 2 and hits > 0 and sum(read) == 0
    figures = [[{k: v for k, v in point.items() if k not in TIMING} for point in report["benchmarks"]["checkpoints"]]
               for report in (incremental, replay)]
    assert figures[0] == figures[1] and figures[0][-1]["benchmarks"]
    assert_same_as_replay(incremental, replay, tmp_path / "incremental", tmp_path / "replay")
