"""What the code emits, read from the code itself: every `metrics.count(...)`,
`metrics.observe(...)` and `metrics.gauge(...)` call in shared/aiprod, with its
metric name and label names (both must be literal, so this can see them)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "shared" / "aiprod"
KINDS = {"count": "counter", "observe": "distribution", "gauge": "gauge"}
NOT_LABELS = {"job_id"}  # keyword arguments of the metrics API that are not labels


@dataclass(frozen=True)
class Call:
    where: str          # path:line
    kind: str           # counter | distribution | gauge
    name: str | None    # None: not a literal (a problem in itself)
    labels: frozenset[str]
    problem: str = ""


def calls_in(source: str, where: str) -> list[Call]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "metrics"
                and node.func.attr in KINDS):
            continue
        at = f"{where}:{node.lineno}"
        first = node.args[0] if node.args else None
        name = first.value if isinstance(first, ast.Constant) and isinstance(
            first.value, str) else None
        labels = frozenset(k.arg for k in node.keywords if k.arg is not None) - NOT_LABELS
        problem = ""
        if name is None:
            problem = "the metric name is not a string literal"
        elif any(k.arg is None for k in node.keywords):
            problem = "labels passed with ** cannot be checked"
        found.append(Call(at, KINDS[node.func.attr], name, labels, problem))
    return found


def collect(root: Path = PACKAGE) -> list[Call]:
    calls: list[Call] = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "metrics.py" and path.parent == PACKAGE:
            continue  # the API itself
        calls += calls_in(path.read_text(), str(path.relative_to(REPO)))
    return calls


def emitted(root: Path = PACKAGE) -> set[str]:
    """Names of the metrics the code emits somewhere."""
    return {c.name for c in collect(root) if c.name is not None}
