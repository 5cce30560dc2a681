"""Task templates: `{{field}}` substitutions and nothing else. Task files arrive in pull requests, so there
is no Jinja, no expressions, no attribute access; anything else between braces is rejected."""

from __future__ import annotations

import re
from typing import Any

from editgate.metrics.benchmarks.sources import Where
from editgate.yamlio import describe

_FIELD = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_MARKUP = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}")


class Template:
    """`{{field}}` replaced by str(doc[field]); any other `{{`, `{%` or `{#` is refused when loading.

    Lookup is a plain dict subscript on the doc, so no attribute, item or call can ever run."""

    def __init__(self, text: str, where: Where, key: str):
        self.text, self.where, self.key = text, where, key
        rest = _FIELD.sub("", text)
        bad = _MARKUP.search(rest)
        if bad:
            raise where.error(key, f"{key}: only {{{{field}}}} substitutions are allowed (no expressions, "
                                   f"filters, dots or Jinja blocks); found {_snippet(rest, bad.start())!r}")
        self.fields = tuple(_FIELD.findall(text))
        dunder = [f for f in self.fields if f.startswith("__")]
        if dunder:
            raise where.error(key, f"{key}: field names may not start with '__' ({dunder[0]!r})")
        self.whole_field = self.fields[0] if _FIELD.fullmatch(text.strip()) else None

    def value(self, doc: dict, index: int) -> Any:
        """The raw field when the template is exactly one `{{field}}` (a list for doc_to_choice)."""
        if self.whole_field is not None:
            return self._lookup(doc, self.whole_field, index)
        return self.render(doc, index)

    def render(self, doc: dict, index: int) -> str:
        def one(match: re.Match) -> str:
            value = self._lookup(doc, match.group(1), index)
            if isinstance(value, (dict, list, tuple)) or value is None:
                raise self.where.error(self.key, f"{self.key}: doc {index}: field {match.group(1)!r} is "
                                                 f"{describe(value)}, not text")
            return str(value)

        return _FIELD.sub(one, self.text)

    def _lookup(self, doc: dict, name: str, index: int) -> Any:
        if not isinstance(doc, dict):
            raise self.where.error(self.key, f"doc {index} is {describe(doc)}, not a record with fields")
        if name not in doc:
            fields = ", ".join(sorted(map(str, doc))[:12])
            raise self.where.error(self.key, f"{self.key}: doc {index} has no field {name!r} (fields: {fields})")
        return doc[name]


def _snippet(text: str, at: int) -> str:
    return text[max(0, at - 10): at + 20]
