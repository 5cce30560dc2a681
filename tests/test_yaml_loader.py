"""The safe YAML (and JSON) loader behind every input: lines kept, hostile documents refused, errors that name the file
and line. Fast; no model is loaded."""

from __future__ import annotations

import time

import pytest

from editgate.errors import InputError
from editgate.yamlio import LineDict, LineList, did_you_mean, load_yaml

from helpers import messages, write


def test_loader_keeps_lines(tmp_path):
    data = load_yaml(write(tmp_path / "x.yaml", "a: 1\nlist:\n  - x\n  - {k: v}\n"), "x.yaml")
    assert isinstance(data, LineDict) and data.line == 1
    assert data.key_lines == {"a": 1, "list": 2}
    assert isinstance(data["list"], LineList) and data["list"].item_lines == [3, 4]
    assert data["list"][1].line == 4


def test_billion_laughs_rejected_quickly(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):  # 9 levels of 9: only 72 aliases, 9**9 values
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    path = write(tmp_path / "lol.yaml", "\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(InputError) as e:
        load_yaml(path, "lol.yaml")
    assert time.perf_counter() - start < 1.0
    assert "aliases expand to more than" in str(e.value)
    assert str(e.value).startswith("lol.yaml:")


def test_too_many_aliases_rejected(tmp_path):
    text = "a: &a x\nb: [" + ", ".join(["*a"] * 150) + "]\n"
    with pytest.raises(InputError, match="more than 100 aliases"):
        load_yaml(write(tmp_path / "many.yaml", text), "many.yaml")


def test_deep_nesting_rejected_without_crashing(tmp_path):
    with pytest.raises(InputError, match="nested more than"):
        load_yaml(write(tmp_path / "deep.yaml", "[" * 100_000), "deep.yaml")


def test_oversize_rejected(tmp_path):
    path = write(tmp_path / "big.yaml", "a: 1\n# " + "x" * 200 + "\n")
    with pytest.raises(InputError, match="big.yaml: is larger than 100 bytes; split it"):
        load_yaml(path, "big.yaml", max_bytes=100)
    assert load_yaml(path, "big.yaml", max_bytes=1000) == {"a": 1}


def test_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "edits:\n  - id: x\n    prompt: a: b\n")
    with pytest.raises(InputError) as e:
        load_yaml(path, "edits/bad.yaml")
    (message,) = messages(e)
    assert message.startswith("edits/bad.yaml:3: invalid YAML")
    assert "quote" in message


def test_duplicate_keys_and_unsafe_tags_and_bad_encoding(tmp_path):
    with pytest.raises(InputError, match=r"d\.yaml:3: .*duplicate key 'a' \(first written on line 1\)"):
        load_yaml(write(tmp_path / "d.yaml", "a: 1\nb: 2\na: 3\n"), "d.yaml")
    with pytest.raises(InputError, match="not allowed"):
        load_yaml(write(tmp_path / "t.yaml", "a: !!python/object/apply:os.system [ls]\n"), "t.yaml")
    (tmp_path / "u.yaml").write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(InputError, match=r"u\.yaml:2: is not valid UTF-8"):
        load_yaml(tmp_path / "u.yaml", "u.yaml")


def test_json_loads_with_lines_and_escaped_emoji(tmp_path):
    data = load_yaml(write(tmp_path / "a.json", '[\n\t{"prompt": "x",\n\t "n": 1e3}\n]'), "a.json")
    assert data[0]["n"] == 1000.0 and data[0].key_lines["n"] == 3
    assert load_yaml(write(tmp_path / "b.json", '{"a": "\\ud83d\\ude00"}'), "b.json") == {"a": "\U0001F600"}


def test_did_you_mean():
    assert did_you_mean("taget", ["id", "target", "subject"]) == " (did you mean 'target'?)"
    assert did_you_mean("zzz", ["id", "target"]) == ""
