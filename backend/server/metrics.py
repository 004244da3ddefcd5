"""Prometheus text exposition (format 0.0.4), sans-I/O: samples in, text out.

Usage::

    text = render([Metric("liveidol_fps", "gauge", "Measured output frame rate.", [Sample(24.9)])])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["CONTENT_TYPE", "Metric", "Sample", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Sample:
    value: float | int | None
    labels: dict[str, str] = field(default_factory=dict)
    suffix: str = ""  # e.g. "_sum", "_count" for summaries


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # "gauge", "counter", "summary"
    help: str
    samples: list[Sample]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float | int | None) -> str:
    if value is None:
        return "NaN"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(metrics: list[Metric]) -> str:
    lines: list[str] = []
    for m in metrics:
        lines.append(f"# HELP {m.name} {m.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        lines.append(f"# TYPE {m.name} {m.kind}")
        for s in m.samples:
            labels = ""
            if s.labels:
                labels = "{" + ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in s.labels.items()) + "}"
            lines.append(f"{m.name}{s.suffix}{labels} {_number(s.value)}")
    return "\n".join(lines) + "\n"
