"""editgate.yaml: defaults without a file, unknown settings and bad values, hyperparameters. Fast; no model
is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from editgate.config import Config, load_config
from editgate.errors import InputError
from editgate.policy import builtin_policy_path

from helpers import messages, write


def test_config_defaults_without_file(tmp_path, monkeypatch):
    monkeypatch.delenv("EDITGATE_CACHE_DIR")  # set for every fast test (conftest): here, the default
    config = load_config(tmp_path)
    assert config == Config(root=tmp_path.resolve())
    assert config.model == "builtin:smollm2-135m" and config.manifests == ["edits/**/*.yaml"]
    assert config.cache_path() == Path("~/.cache/editgate").expanduser()
    assert config.policy_path() == builtin_policy_path("default")  # no policies/default.yaml here


def test_config_unknown_key_and_bad_values(tmp_path):
    write(tmp_path / "editgate.yaml", "modle: x\ndtype: fp16\ndevice: gpu\nthreads: 0\nmethod: rom\n"
                                      "trust_remote_code: 'yes'\nhparams: {rome: {layr: 1}, memitt: {}}\n")
    with pytest.raises(InputError) as e:
        load_config(tmp_path)
    got = messages(e)
    assert got[0] == "editgate.yaml:1: unknown setting 'modle' (did you mean 'model'?)"
    assert got[1].startswith("editgate.yaml:2: dtype: 'fp16' is not one of auto, float32, bfloat16, float16")
    assert got[2].startswith("editgate.yaml:3: device: 'gpu' is not a device")
    assert got[3].startswith("editgate.yaml:4: threads: must be a whole number from 1 to ")
    assert got[4].startswith("editgate.yaml:5: method: unknown method 'rom' (did you mean 'rome'?)")
    assert got[5].startswith("editgate.yaml:6: trust_remote_code: running the model repository's code is the "
                             "runner owner's decision")
    assert len(got) == 6  # hparams are checked only once `method` is valid


def test_config_hparams_checked(tmp_path):
    write(tmp_path / "editgate.yaml", "hparams:\n  rome: {layr: 1}\n  memitt: {}\n")
    with pytest.raises(InputError) as e:
        load_config(tmp_path)
    got = messages(e)
    assert got[0].startswith("editgate.yaml:2: hparams.rome: unknown hyperparameter 'layr'")
    assert got[1].startswith("editgate.yaml:3: hparams: unknown method 'memitt'")
