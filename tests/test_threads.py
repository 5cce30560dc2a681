"""The thread count and OpenMP's waiting: the CPUs a process may use (affinity and cgroup quota), and
editgate's OpenMP settings in place before torch is imported, a user's own kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from editgate import threads


@pytest.mark.parametrize(("text", "cpus"), [("200000 100000\n", 2), ("150000 100000", 2), ("50000 100000", 1),
                                            ("max 100000\n", None), ("garbage", None), ("", None)])
def test_a_cgroup_quota_is_read_as_whole_cpus(tmp_path, text, cpus):
    path = tmp_path / "cpu.max"
    path.write_text(text)
    assert threads.cgroup_cpus(path) == cpus


def test_no_cgroup_file_means_no_quota(tmp_path):
    assert threads.cgroup_cpus(tmp_path / "absent") is None


def test_usable_cpus_is_capped_by_the_quota(monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 1)
    assert threads.usable_cpus() == 1
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: affinity + 8)
    assert threads.usable_cpus() == affinity  # a quota above the affinity mask gives no more CPUs


def _child_environment(env: dict[str, str]) -> dict[str, str | None]:
    """What a fresh interpreter that imports editgate, then torch, has in its OpenMP variables."""
    code = ("import os, editgate, torch; print(__import__('json').dumps("
            "{k: os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')}))")
    clean = {k: v for k, v in os.environ.items() if k not in threads.USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return json.loads(out)


def test_importing_editgate_sets_its_openmp_settings_before_torch():
    seen = _child_environment({})
    for name, value in threads.OPENMP_SETTINGS.items():
        assert seen[name] == value


@pytest.mark.parametrize("name", threads.USER_SETTINGS)
def test_a_users_openmp_setting_is_kept(name):
    seen = _child_environment({name: "12345" if name == "GOMP_SPINCOUNT" else "ACTIVE"})
    assert seen[name] == ("12345" if name == "GOMP_SPINCOUNT" else "ACTIVE")
    assert all(seen[other] is None for other in threads.USER_SETTINGS if other != name)
