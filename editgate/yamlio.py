"""Safe, bounded YAML (and JSON) reading that remembers line numbers.

Manifests arrive in pull requests, so everything read here is untrusted: only the safe constructors,
a size bound, a nesting bound and a bound on alias expansion ("billion laughs"). Every mapping and
sequence keeps the line it came from, so each validation message can say `file:line`.
JSON goes through the same loader (YAML is a superset), so JSON manifests get line numbers too.
"""

from __future__ import annotations

import datetime
import difflib
import json
import re
from pathlib import Path
from typing import Any, Iterable

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.resolver import Resolver

from editgate.errors import InputError, Problem

MAX_BYTES = 16 * 1024 * 1024
MAX_ALIASES = 100
MAX_ALIAS_EXPANSION = 100_000  # nodes that aliases may add beyond those written in the file
MAX_DEPTH = 100


class LineDict(dict):
    """A mapping that remembers where it and each of its keys were written (1-based lines).

    `value_text` keeps the text of scalar values as written, so an error can show `no` rather than
    `False` when YAML has turned an unquoted word into a boolean.
    """

    line: int | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.line = None
        self.key_lines: dict[Any, int] = {}
        self.value_text: dict[Any, str] = {}


class LineList(list):
    """A sequence that remembers its own line and each item's line (1-based)."""

    line: int | None = None

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.line = None
        self.item_lines: list[int] = []


class _LimitError(Exception):
    """A bound on untrusted input was exceeded while composing; carries the mark and a fix hint."""

    def __init__(self, message: str, mark: Any, hint: str):
        super().__init__(message)
        self.message, self.mark, self.hint = message, mark, hint


try:  # libyaml's parser, when PyYAML was built with it, is several times faster (README: Performance)
    from yaml._yaml import CParser as _Parser

    _PURE_PYTHON = False
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser as _Parser  # type: ignore[assignment]
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    _PURE_PYTHON = True


class _Composer(Composer):
    """The pure-Python composer with bounds: libyaml's own composer recurses in C and segfaults
    on deeply nested input, and neither bounds alias expansion."""

    def _init_bounds(self) -> None:
        self._depth = 0
        self._aliases = 0
        self._alias_extra = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes in its subtree, aliases expanded
        self._count = 0  # nodes composed so far, aliases expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            mark = self.peek_event().start_mark
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _LimitError(f"more than {MAX_ALIASES} aliases (*name)", mark, _ALIAS_HINT)
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise _LimitError("an alias refers to a node that contains it", mark, _ALIAS_HINT)
            self._alias_extra += size
            self._count += size
            if self._alias_extra > MAX_ALIAS_EXPANSION:
                raise _LimitError(
                    f"aliases expand to more than {MAX_ALIAS_EXPANSION} values", mark, _ALIAS_HINT
                )
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _LimitError(
                f"nested more than {MAX_DEPTH} levels deep",
                self.peek_event().start_mark,
                "flatten the structure",
            )
        before = self._count
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._count += 1
        self._sizes[id(node)] = self._count - before
        return node


_ALIAS_HINT = "write the values out instead of using YAML anchors and aliases (&name, *name)"


class _LineConstructor(SafeConstructor):
    """Safe constructors only; mappings and sequences become LineDict / LineList."""

    def construct_line_map(self, node: yaml.MappingNode) -> Any:
        data = LineDict()
        data.line = node.start_mark.line + 1
        yield data
        self._reject_duplicate_keys(node)
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    "found an unhashable key", key_node.start_mark,
                ) from None
            data[key] = self.construct_object(value_node, deep=False)
            data.key_lines[key] = key_node.start_mark.line + 1
            if isinstance(value_node, yaml.ScalarNode):
                data.value_text[key] = value_node.value

    def construct_line_seq(self, node: yaml.SequenceNode) -> Any:
        data = LineList()
        data.line = node.start_mark.line + 1
        yield data
        data.extend(self.construct_object(child, deep=False) for child in node.value)
        data.item_lines = [child.start_mark.line + 1 for child in node.value]

    def _reject_duplicate_keys(self, node: yaml.MappingNode) -> None:
        """YAML silently keeps the last of two equal keys; in a manifest that hides a mistake."""
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key_node.value!r} (first written on line {seen[key_node.value]})",
                    key_node.start_mark,
                )
            seen[key_node.value] = line


_LineConstructor.add_constructor("tag:yaml.org,2002:map", _LineConstructor.construct_line_map)
_LineConstructor.add_constructor("tag:yaml.org,2002:seq", _LineConstructor.construct_line_seq)


class _Resolver(Resolver):
    """YAML 1.1 resolution plus JSON-style floats (`1e5`, `2E-3`), which YAML 1.1 leaves as strings."""


_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)

if _PURE_PYTHON:  # pragma: no cover

    class _Loader(Reader, Scanner, _Parser, _Composer, _LineConstructor, _Resolver):  # type: ignore[misc]
        def __init__(self, stream: str):
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            _Parser.__init__(self)
            _Composer.__init__(self)
            _LineConstructor.__init__(self)
            _Resolver.__init__(self)
            self._init_bounds()

else:

    class _Loader(_Composer, _Parser, _LineConstructor, _Resolver):  # type: ignore[no-redef]
        """libyaml events, composed in Python (bounded), constructed safely with line numbers."""

        def __init__(self, stream: str):
            _Parser.__init__(self, stream)
            _Composer.__init__(self)
            _LineConstructor.__init__(self)
            _Resolver.__init__(self)
            self._init_bounds()


_YAML_HINT = (
    "check the indentation and quoting; quote values that contain ': ' or ' #', "
    "or that start with a special character such as { [ * & ! | > ' \" % @ `"
)


def load_yaml(path: Path, shown_as: str, max_bytes: int = MAX_BYTES) -> Any:
    """Read one YAML or JSON file safely; raise InputError naming `shown_as` and the line."""
    text = read_text(Path(path), shown_as, max_bytes)
    _reject_control_characters(text, shown_as)
    try:
        loader = _Loader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _LimitError as e:
        raise InputError(Problem(shown_as, _line(e.mark), f"{e.message}; {e.hint}")) from None
    except RecursionError:
        raise InputError(Problem(shown_as, None, "nested too deeply; flatten the structure")) from None
    except yaml.YAMLError as e:
        if Path(path).suffix.lower() == ".json":
            return _load_json(text, shown_as, e)
        raise InputError(_yaml_problem(e, shown_as)) from None


# what YAML refuses to read (C0 controls but tab and line breaks, DEL, C1 but NEL, surrogates, BOM-likes)
_UNREADABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ufffe\uffff]")


def _reject_control_characters(text: str, shown_as: str) -> None:
    """libyaml reports these by character offset only; say the line and column instead."""
    match = _UNREADABLE.search(text)
    if match is None:
        return
    line = text.count("\n", 0, match.start()) + 1
    column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
    raise InputError(Problem(shown_as, line, f"contains the control character U+{ord(match.group()):04X} "
                                             f"at column {column}; remove it"))


def read_text(path: Path, shown_as: str, max_bytes: int = MAX_BYTES) -> str:
    """Bytes bounded before reading everything (a file may lie about its size, e.g. a FIFO)."""
    try:
        if not path.is_file():
            what = "does not exist" if not path.exists() else "is not a regular file"
            raise InputError(Problem(shown_as, None, f"{what}"))
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise InputError(Problem(shown_as, None, f"cannot be read: {e.strerror or e}")) from None
    if len(data) > max_bytes:
        raise InputError(Problem(
            shown_as, None,
            f"is larger than {_size(max_bytes)}; split it into several smaller files",
        ))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(Problem(
            shown_as, line, f"is not valid UTF-8 (byte 0x{data[e.start]:02x}); save the file as UTF-8"
        )) from None


def load_records(path: Path, shown_as: str) -> list[tuple[Any, int | None]]:
    """(record, line) pairs of a JSON file (a list, `{"docs"|"data": [...]}` or a mapping of records),
    a JSONL file (one record a line), or a text file (one record a non-empty line); bounded like YAML."""
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        data = load_yaml(path, shown_as)
        if isinstance(data, dict):
            wrapped = next((data[k] for k in ("docs", "data") if isinstance(data.get(k), list)), None)
            data = wrapped if wrapped is not None else LineList(data.values())
        if not isinstance(data, list):
            raise InputError(Problem(shown_as, line_of(data), f"expected a list of records, not {describe(data)}"))
        return [(record, line_of(data, i)) for i, record in enumerate(data)]
    text = read_text(Path(path), shown_as)
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if suffix != ".jsonl":
            records.append((line, number))
            continue
        try:
            records.append((_with_line_types(json.loads(line)), number))
        except RecursionError:
            raise InputError(Problem(shown_as, number, "nested too deeply; flatten the record")) from None
        except json.JSONDecodeError as e:
            raise InputError(Problem(shown_as, number, f"invalid JSON: {e.msg}")) from None
    return records


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:g} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def _line(mark: Any) -> int | None:
    return mark.line + 1 if mark is not None else None


def _yaml_problem(e: yaml.YAMLError, shown_as: str) -> Problem:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    message = f"invalid YAML: {context + ': ' if context else ''}{problem}"
    if "constructor for the tag" in message:
        hint = "tags such as !!python/... are not allowed; remove the tag"
    elif "duplicate key" in message:
        hint = "remove one of them"
    elif "cannot start any token" in message:
        hint = "indent with spaces, not tabs, and quote values that start with a special character"
    elif "expected a single document" in message:
        hint = "put everything in one document (remove the extra '---')"
    else:
        hint = _YAML_HINT
    return Problem(shown_as, _line(mark), f"{message}; {hint}")


def _load_json(text: str, shown_as: str, yaml_error: yaml.YAMLError) -> Any:
    """Strict JSON that YAML rejects (e.g. escaped emoji surrogate pairs); no line numbers then."""
    try:
        return _with_line_types(json.loads(text))
    except RecursionError:
        raise InputError(Problem(shown_as, None, "nested too deeply; flatten the structure")) from None
    except json.JSONDecodeError as e:
        raise InputError(Problem(shown_as, e.lineno, f"invalid JSON: {e.msg}")) from None


def _with_line_types(value: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise RecursionError
    if isinstance(value, dict):
        out = LineDict()
        for k, v in value.items():
            out[k] = _with_line_types(v, depth + 1)
        return out
    if isinstance(value, list):
        return LineList(_with_line_types(v, depth + 1) for v in value)
    return value


# --- helpers shared by config, policy and manifest validation --------------------------------------


def did_you_mean(word: Any, options: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest option, or '' when nothing is close."""
    match = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown_key(what: str, key: Any, options: Iterable[str]) -> str:
    """The message for an unknown key: a suggestion when one is close, else the allowed keys."""
    options = list(options)
    hint = did_you_mean(key, options)
    if not hint:
        hint = f"; allowed: {', '.join(options)}"
    return f"unknown {what} {str(key)!r}{hint}"


def line_of(container: Any, key: Any = None) -> int | None:
    """The line of `container[key]` (its key's line), or of the container itself."""
    if key is not None:
        if isinstance(container, LineDict) and key in container.key_lines:
            return container.key_lines[key]
        if isinstance(container, LineList) and isinstance(key, int) and key < len(container.item_lines):
            return container.item_lines[key]
    return getattr(container, "line", None)


def line_of_mentioned(mapping: Any, message: str) -> int | None:
    """The line of the key a message names as 'key' (check_hparams messages name their key)."""
    if isinstance(mapping, dict):
        for key in mapping:
            if repr(str(key)) in message:
                return line_of(mapping, key)
    return None


def describe(value: Any) -> str:
    """How YAML read a value, in the user's terms."""
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return f"a date ({value.isoformat()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "text"
    return type(value).__name__


def quote_hint(container: Any, key: Any, value: Any) -> str:
    """For a scalar YAML converted from an unquoted word, the fix: quote it, shown as written."""
    if isinstance(value, (bool, int, float, datetime.date)) and not isinstance(value, (dict, list)):
        written = container.value_text.get(key) if isinstance(container, LineDict) else None
        written = written if written is not None else str(value)
        if isinstance(key, str):
            return f"; quote it: {key}: \"{written}\""
        return f"; quote it: \"{written}\""
    return ""


def plain(value: Any) -> Any:
    """A deep copy as plain dicts and lists, for values handed on beyond validation (hashing, JSON)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
