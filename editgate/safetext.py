"""Text from a pull request, made safe to print.

Manifest names, ids, prompts and messages that quote them reach the terminal, the CI log and the job
summary. A line break inside one would start a new line of the log, and a log line that begins with
`::` is a command to the GitHub Actions runner (`::warning ::...`, `::stop-commands::...`), so a
repository could forge output or steer the runner. Every line editgate prints goes through
`printable_line`: control characters are shown as escapes and a leading `::` is defused.
"""

from __future__ import annotations

import re
from typing import Any

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators (terminals and some log
# viewers break lines on them too). Tab is kept: it cannot end a line.
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def has_control(text: str) -> bool:
    return CONTROL.search(text) is not None


def _escape(match: re.Match) -> str:
    char = match.group()
    named = {"\n": "\\n", "\r": "\\r"}
    if char in named:
        return named[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: Any) -> str:
    """The text on one line, control characters written as escapes (\\n, \\x1b, \\u2028)."""
    return CONTROL.sub(_escape, str(value))


def printable_line(value: Any) -> str:
    """`printable`, and never a workflow command: a line that would start with `::` (after spaces,
    which the runner skips) starts with a backslash instead."""
    text = printable(value)
    return "\\" + text if text.lstrip().startswith("::") else text


def printable_lines(value: Any) -> str:
    """Several lines (a message that is meant to span lines): each line made safe on its own."""
    return "\n".join(printable_line(line) for line in str(value).split("\n"))
