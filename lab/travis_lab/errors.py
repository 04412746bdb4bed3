"""The one error type the lab raises: it names the step that failed and the remedy."""

from __future__ import annotations


class LabError(Exception):
    """A lab step failed. `str()` is the message for the operator: step, problem, remedy."""

    def __init__(self, step: str, problem: str, remedy: str) -> None:
        super().__init__(f"{step}: {problem}")
        self.step = step
        self.problem = problem
        self.remedy = remedy

    def __str__(self) -> str:
        return f"travis-lab: step '{self.step}' failed: {self.problem}\n  remedy: {self.remedy}"
