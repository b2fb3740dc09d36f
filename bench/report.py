"""Results as a compact table on stdout, and as JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    metric: str
    value: str
    goal: str = ""
    verdict: str = ""  # PASS, FAIL or empty when the row has no goal


@dataclass
class Section:
    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, metric: str, value: str, goal: str = "", passed: bool | None = None) -> None:
        verdict = "" if passed is None else ("PASS" if passed else "FAIL")
        self.rows.append(Row(metric, value, goal, verdict))


def rate(value: float) -> str:
    return f"{value:,.0f} req/s"


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} ms"


def ratio(value: float) -> str:
    return f"{value:.3f}"


def cores(usage: dict[str, float]) -> str:
    """'overnight 0.98 (event loop thread 0.80), nginx 0.10, ...'"""
    suffix = " event loop thread"
    parts = []
    for name, used in usage.items():
        if name.endswith(suffix):
            continue
        part = f"{name} {used:.2f}"
        if name + suffix in usage:
            part += f" (event loop thread {usage[name + suffix]:.2f})"
        parts.append(part)
    return ", ".join(parts)


def render(header: list[str], sections: list[Section]) -> str:
    width = max([len(r.metric) for s in sections for r in s.rows] + [20])
    value_width = max([len(r.value) for s in sections for r in s.rows] + [10])
    goal_width = max([len(r.goal) for s in sections for r in s.rows] + [4])
    out = [*header]
    for section in sections:
        out += ["", f"== {section.title}"]
        for row in section.rows:
            metric, value, goal = (
                row.metric.ljust(width),
                row.value.rjust(value_width),
                row.goal.ljust(goal_width),
            )
            line = f"  {metric}  {value}  {goal}  {row.verdict}"
            out.append(line.rstrip())
        out += [f"  * {note}" for note in section.notes]
    verdicts = [r.verdict for s in sections for r in s.rows if r.verdict]
    if verdicts:
        failed = verdicts.count("FAIL")
        out += ["", f"goals: {len(verdicts) - failed} of {len(verdicts)} met"]
    return "\n".join(out)
