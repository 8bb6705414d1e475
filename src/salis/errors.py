"""Errors that reach the user: one line naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class SalisError(Exception):
    """A problem the user can fix; printed without a traceback by the stages and the CLI."""


class InputError(SalisError):
    """Bad input data: names the file and what is wrong with it."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ParamsError(SalisError):
    """A value in params.yaml of the wrong type or out of range."""
