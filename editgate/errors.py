"""Error types that map to the CLI's exit codes (2 invalid input, 3 the run failed)."""

from __future__ import annotations

from dataclasses import dataclass

from editgate.safetext import printable


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input, located in a file and line when known."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        """One printable line: file names and messages quote pull-request text (editgate/safetext.py)."""
        where = f"{self.file}:{self.line}" if self.line else self.file
        return printable(f"{where}: {self.message}")


class InputError(Exception):
    """The user's config, manifests, policy or arguments are invalid (exit code 2).

    Carries every problem found, so the user can fix them all in one go.
    """

    def __init__(self, problems: list[Problem] | Problem | str):
        if isinstance(problems, str):
            problems = [Problem("<input>", None, problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class RunError(Exception):
    """The run itself failed: model missing, out of memory, unsupported architecture (exit code 3)."""
