"""Edit manifests: the facts a team wants changed, read from YAML or JSON in the repository.

Two shapes are accepted: the native `{edits: [...]}` mapping (optionally with manifest-wide
`method:` and `hparams:`), and a CounterFact-style top-level list of records, so public editing
datasets gate as-is. Validation collects every problem across every file, each with `file:line`,
before anything is run; a model is never loaded for a manifest that cannot be applied.

Paraphrases of a native edit may mark the subject with "{}" too; it is filled in when loading.
Locality prompts are taken literally (they are about other subjects).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editgate.errors import InputError, Problem
from editgate.methods import check_hparams, method_names
from editgate.safetext import has_control, printable
from editgate.yamlio import (
    describe, line_of, line_of_mentioned, load_yaml, plain, quote_hint, unknown_key,
)

EDIT_FIELDS = ("id", "prompt", "subject", "target", "ground_truth", "paraphrases", "locality",
               "method", "hparams")
MANIFEST_KEYS = ("edits", "method", "hparams")
LOCALITY_FIELDS = ("prompt", "answer")
MAX_ID_LENGTH = 200
COUNTERFACT_FIELDS = ("case_id", "prompt", "subject", "target_new", "ground_truth",
                      "rephrase_prompt", "locality_prompt", "locality_ground_truth")


@dataclass(frozen=True)
class LocalityCheck:
    """A prompt whose answer must not change; `answer` None means "whatever the base model says"."""

    prompt: str
    answer: str | None = None


@dataclass(frozen=True)
class Edit:
    """One requested fact change.

    `prompt` contains exactly one "{}" marking the subject; `text` is the prompt as the model sees
    it. `method` is the effective method (edit, else manifest, else config default) and `hparams`
    the manifest's and edit's overrides merged (the config's per-method defaults are not included).
    """

    id: str
    prompt: str
    subject: str
    target: str
    ground_truth: str | None = None
    paraphrases: tuple[str, ...] = ()
    locality: tuple[LocalityCheck, ...] = ()
    method: str | None = None
    hparams: dict = field(default_factory=dict, hash=False, compare=False)
    source: str = ""
    line: int = 0

    @property
    def text(self) -> str:
        """The prompt with the subject filled in (str.replace: prompts may contain other braces)."""
        return self.prompt.replace("{}", self.subject, 1)

    @property
    def where(self) -> str:
        """`file:line` for messages and CI annotations."""
        return f"{self.source}:{self.line}" if self.line else self.source


def edit_fingerprint(edit: Edit) -> str:
    """sha256 of what the edit does (not its id or location), to tell changed edits from moved ones."""
    content = {
        "prompt": edit.prompt, "subject": edit.subject, "target": edit.target,
        "ground_truth": edit.ground_truth, "paraphrases": list(edit.paraphrases),
        "locality": [[c.prompt, c.answer] for c in edit.locality],
        "method": edit.method, "hparams": edit.hparams,
    }
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def load_manifests(paths: list[Path], root: Path, default_method: str) -> list[Edit]:
    """Read and validate manifests in the given order; raise one InputError listing all problems."""
    collector = ManifestCollector()
    for path in paths:
        collector.add_file(Path(path), shown_as(Path(path), root), default_method)
    if collector.problems:
        raise InputError(collector.problems)
    return collector.edits


def shown_as(path: Path, root: Path) -> str:
    """A path relative to the repository root (POSIX style), as users and CI annotations see it."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


class ManifestCollector:
    """Accumulates edits and problems across files, so ids are checked for uniqueness globally."""

    def __init__(self) -> None:
        self.edits: list[Edit] = []
        self.problems: list[Problem] = []
        self._ids: dict[str, str] = {}  # id -> "file:line" where first defined, across files

    def add_file(self, path: Path, shown: str, default_method: str, data: Any = None, loaded: bool = False) -> None:
        """Validate one manifest file (or its already-loaded `data`) and keep its edits."""
        if not loaded:
            try:
                data = load_yaml(path, shown)
            except InputError as e:
                self.problems.extend(e.problems)
                return
        file = _File(shown, Path(path).stem, default_method, self._ids)
        self.edits.extend(file.parse(data))
        self.problems.extend(sorted(file.problems, key=lambda p: p.line or 0))


class _File:
    """Validation of one manifest: problems are prefixed with the file and the edit they concern."""

    def __init__(self, shown: str, stem: str, default_method: str, ids: dict[str, str]):
        self.shown, self.stem, self.default_method = shown, stem, default_method
        self.ids = ids  # shared across files: id -> "file:line" where first defined
        self.problems: list[Problem] = []

    def claim_id(self, edit_id: str | None, line: int | None) -> None:
        """Ids name edits in reports, logs and --base-ref comparisons, so they must be unique everywhere
        and printable (a line break in an id would forge a line of the CI log)."""
        if edit_id is None:
            return
        if has_control(edit_id) or len(edit_id) > MAX_ID_LENGTH:
            self.problem(line, f"edit {printable(edit_id)[:80]!r}: an id is at most {MAX_ID_LENGTH} characters "
                               "without control characters (line breaks, escapes); rename it")
        first = self.ids.get(edit_id)
        if first is not None:
            self.problem(line, f"edit {edit_id!r}: duplicate id, already used at {first}; ids must be unique")
        else:
            self.ids[edit_id] = f"{self.shown}:{line}" if line else self.shown

    def problem(self, line: int | None, message: str) -> None:
        self.problems.append(Problem(self.shown, line, message))

    # --- shapes ------------------------------------------------------------------------------------

    def parse(self, data: Any) -> list[Edit]:
        if data is None:
            self.problem(None, "no edits: the file is empty; list them under 'edits:'")
            return []
        if isinstance(data, dict):
            return self._parse_mapping(data)
        if isinstance(data, list):
            return self._parse_counterfact(data)
        self.problem(line_of(data), "expected a mapping with an 'edits:' list, or a CounterFact-style "
                                    f"list of records, not {describe(data)}")
        return []

    def _parse_mapping(self, data: dict) -> list[Edit]:
        for key in data:
            if key not in MANIFEST_KEYS:
                self.problem(line_of(data, key), unknown_key("top-level key", key, MANIFEST_KEYS))
        if "edits" not in data:
            looks_like_edit = any(k in data for k in ("prompt", "subject", "target"))
            hint = "; put the edit in a list under 'edits:'" if looks_like_edit else ""
            self.problem(line_of(data), f"no 'edits:' list{hint}")
            return []
        method = self._method(data, "manifest", self.default_method)
        shared = self._hparams(data, "manifest", method)
        edits = data["edits"]
        if edits is None or (isinstance(edits, list) and not edits):
            self.problem(line_of(data, "edits"), "no edits: 'edits:' is empty")
            return []
        if not isinstance(edits, list):
            self.problem(line_of(data, "edits"), f"'edits' must be a list of edits, not {describe(edits)}")
            return []
        out = []
        for index, item in enumerate(edits):
            edit = self._parse_native(item, index, line_of(edits, index), method, shared)
            if edit is not None:
                out.append(edit)
        return out

    def _parse_counterfact(self, records: list) -> list[Edit]:
        if not records:
            self.problem(line_of(records), "no edits: the list is empty")
            return []
        if any(isinstance(r, dict) and ("target" in r or "id" in r) and "target_new" not in r for r in records):
            self.problem(line_of(records), "a top-level list is read as CounterFact records "
                                           "(target_new, rephrase_prompt, ...); put native edits under 'edits:'")
        out = []
        for index, item in enumerate(records):
            edit = self._parse_record(item, index, line_of(records, index))
            if edit is not None:
                out.append(edit)
        return out

    # --- native edits -----------------------------------------------------------------------------

    def _parse_native(self, item: Any, index: int, line: int | None, method: str, shared: dict) -> Edit | None:
        label = f"edit #{index + 1}"
        if not isinstance(item, dict):
            self.problem(line, f"{label}: must be a mapping with id, prompt, subject and target, not {describe(item)}")
            return None
        edit_id = self._text(item, "id", label, required=True)
        label = f"edit {edit_id!r}" if edit_id else label
        self.claim_id(edit_id, line)
        for key in item:
            if key not in EDIT_FIELDS:
                self.problem(line_of(item, key), f"{label}: {unknown_key('field', key, EDIT_FIELDS)}")
        prompt = self._text(item, "prompt", label, required=True)
        subject = self._text(item, "subject", label, required=True)
        target = self._text(item, "target", label, required=True)
        ground_truth = self._text(item, "ground_truth", label)
        paraphrases = self._texts(item, "paraphrases", label)
        locality = self._locality(item, label)
        edit_method = self._method(item, label, method)
        hparams = self._hparams(item, label, edit_method)
        if edit_method == method:  # manifest-wide hparams are for the manifest's method only
            hparams = {**shared, **hparams}
        prompt = self._normalise(item, label, prompt, subject)
        self._check_target(item, label, target, ground_truth)
        if not (edit_id and prompt and subject and target) or None in (paraphrases, locality):
            return None
        return Edit(
            id=edit_id, prompt=prompt, subject=subject, target=target, ground_truth=ground_truth,
            paraphrases=tuple(p.replace("{}", subject) for p in paraphrases), locality=locality,
            method=edit_method, hparams=hparams, source=self.shown, line=line or 0,
        )

    # --- CounterFact records ------------------------------------------------------------------------

    def _parse_record(self, item: Any, index: int, line: int | None) -> Edit | None:
        label = f"record #{index + 1}"
        if not isinstance(item, dict):
            self.problem(line, f"{label}: must be a mapping with prompt, subject and target_new, not {describe(item)}")
            return None
        edit_id = self._case_id(item, label, f"{self.stem}-{index}")
        label = f"edit {edit_id!r}" if edit_id else label
        self.claim_id(edit_id, line)
        for key in item:
            if key not in COUNTERFACT_FIELDS:
                self.problem(line_of(item, key), f"{label}: {unknown_key('field', key, COUNTERFACT_FIELDS)}")
        prompt = self._text(item, "prompt", label, required=True)
        subject = self._text(item, "subject", label, required=True)
        target = self._text(item, "target_new", label, required=True)
        ground_truth = self._text(item, "ground_truth", label)
        paraphrases = self._texts(item, "rephrase_prompt", label)
        loc_prompts = self._texts(item, "locality_prompt", label)
        loc_answers = self._texts(item, "locality_ground_truth", label) if "locality_ground_truth" in item else ()
        locality = self._pair_locality(item, label, loc_prompts, loc_answers)
        prompt = self._normalise(item, label, prompt, subject)
        self._check_target(item, label, target, ground_truth, key="target_new")
        if not (edit_id and prompt and subject and target) or None in (paraphrases, locality):
            return None
        return Edit(
            id=edit_id, prompt=prompt, subject=subject, target=target, ground_truth=ground_truth,
            paraphrases=tuple(paraphrases), locality=locality, method=self.default_method,
            hparams={}, source=self.shown, line=line or 0,
        )

    def _case_id(self, item: dict, label: str, fallback: str) -> str | None:
        if "case_id" not in item:
            return fallback
        value = item["case_id"]
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip():
            self.problem(line_of(item, "case_id"),
                         f"{label}: 'case_id' must be a number or text, not {describe(value)}")
            return None
        return f"case-{str(value).strip()}"

    def _pair_locality(self, item: dict, label: str, prompts: tuple | None, answers: tuple | None) -> tuple | None:
        if prompts is None or answers is None:
            return None
        if answers and len(answers) != len(prompts):
            self.problem(line_of(item, "locality_ground_truth"),
                         f"{label}: {len(prompts)} locality_prompt but {len(answers)} locality_ground_truth; "
                         "give one answer per prompt")
            return None
        return tuple(LocalityCheck(p, answers[i] if answers else None) for i, p in enumerate(prompts))

    # --- fields -------------------------------------------------------------------------------------

    def _text(self, item: dict, key: str, label: str, required: bool = False) -> str | None:
        """A text field; YAML's unquoted `no`, `1999` or `2026-01-01` are reported with "quote it"."""
        if key not in item:
            if required:
                self.problem(line_of(item), f"{label}: {key!r} is required")
            return None
        value = item[key]
        line = line_of(item, key)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required or value is not None:
                self.problem(line, f"{label}: {key!r} is empty")
            return None
        if not isinstance(value, str):
            self.problem(line, f"{label}: {key!r} must be text, but YAML read {describe(value)}"
                               f"{quote_hint(item, key, value)}")
            return None
        return value

    def _texts(self, item: dict, key: str, label: str) -> tuple[str, ...] | None:
        """A list of texts (a single text is accepted as a list of one); None when invalid."""
        value = item.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
            lines = [line_of(item, key)]
        elif isinstance(value, list):
            lines = [line_of(value, i) or line_of(item, key) for i in range(len(value))]
        else:
            self.problem(line_of(item, key), f"{label}: {key!r} must be a list of texts, not {describe(value)}")
            return None
        out, ok = [], True
        for i, (text, line) in enumerate(zip(value, lines)):
            if not isinstance(text, str) or not text.strip():
                what = "empty" if text is None or isinstance(text, str) else f"{describe(text)}; quote it"
                self.problem(line, f"{label}: {key} item {i + 1} must be text, not {what}")
                ok = False
            else:
                out.append(text)
        return tuple(out) if ok else None

    def _locality(self, item: dict, label: str) -> tuple[LocalityCheck, ...] | None:
        value = item.get("locality")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.problem(line_of(item, "locality"), f"{label}: 'locality' must be a list of "
                                                     f"{{prompt, answer}} entries, not {describe(value)}")
            return None
        out: list[LocalityCheck] = []
        ok = True
        for i, entry in enumerate(value):
            check = self._locality_entry(entry, f"{label}: locality item {i + 1}", line_of(value, i))
            ok = ok and check is not None
            if check is not None:
                out.append(check)
        return tuple(out) if ok else None

    def _locality_entry(self, entry: Any, label: str, line: int | None) -> LocalityCheck | None:
        if isinstance(entry, str) and entry.strip():
            return LocalityCheck(entry)
        if not isinstance(entry, dict):
            self.problem(line, f"{label}: must be a prompt or {{prompt, answer}}, not {describe(entry)}")
            return None
        for key in entry:
            if key not in LOCALITY_FIELDS:
                self.problem(line_of(entry, key), f"{label}: {unknown_key('field', key, LOCALITY_FIELDS)}")
        before = len(self.problems)
        prompt = self._text(entry, "prompt", label, required=True)
        answer = self._text(entry, "answer", label)
        if len(self.problems) > before or prompt is None:
            return None
        return LocalityCheck(prompt, answer)

    def _method(self, item: dict, label: str, fallback: str) -> str:
        if "method" not in item:
            return fallback
        value = item["method"]
        line = line_of(item, "method")
        if not isinstance(value, str) or not value.strip():
            self.problem(line, f"{label}: 'method' must be a method name, not {describe(value)}")
            return fallback
        if value not in method_names():
            self.problem(line, f"{label}: {unknown_key('method', value, method_names())}")
            return fallback
        return value

    def _hparams(self, item: dict, label: str, method: str) -> dict:
        value = item.get("hparams")
        if value is None:
            return {}
        line = line_of(item, "hparams")
        if not isinstance(value, dict):
            self.problem(line, f"{label}: 'hparams' must be a mapping of hyperparameters, not {describe(value)}")
            return {}
        for message in check_hparams(method, value):
            self.problem(line_of_mentioned(value, message) or line, f"{label}: {message}")
        return plain(value)

    # --- meaning ------------------------------------------------------------------------------------

    def _normalise(self, item: dict, label: str, prompt: str | None, subject: str | None) -> str | None:
        """The prompt with exactly one "{}" where the subject goes."""
        if prompt is None:
            return None
        line = line_of(item, "prompt")
        count = prompt.count("{}")
        if count > 1:
            self.problem(line, f"{label}: 'prompt' has {count} '{{}}' placeholders; use exactly one, for the subject")
            return None
        if count == 1 or subject is None:
            return prompt if count == 1 else None
        if subject in prompt:
            return prompt.replace(subject, "{}", 1)
        hint = " (it does with different capitalisation; match it exactly)" if subject.lower() in prompt.lower() else ""
        self.problem(line, f"{label}: the subject {subject!r} does not occur in the prompt{hint}; "
                           "write it literally or mark its place with {}")
        return None

    def _check_target(self, item: dict, label: str, target: str | None, ground_truth: str | None,
                      key: str = "target") -> None:
        if target is not None and ground_truth is not None and target.strip() == ground_truth.strip():
            self.problem(line_of(item, key), f"{label}: {key!r} equals 'ground_truth'; the edit would change nothing")
