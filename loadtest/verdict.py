"""The project's performance targets, judged from the rows of one ``loadtest compare`` run.

Each target is a ratio of two rows' measurements in the same round (so both were loaded
minutes apart at most) against a threshold; over several rounds (``compare --rounds N``) the
verdict is the median of the per-round ratios, which a shared machine's drift between rounds
moves far less than any one round. A target whose rows did not run (skipped, ``--only``,
failed) is reported as not judged. :func:`median_rows` folds the rounds into one row per
configuration for the main table.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["TARGETS", "Target", "judge", "markdown", "median_rows"]

#: Measurements that are medians over the rounds; counts are summed; the failure ratio is
#: recomputed from the summed counts.
MEDIAN_KEYS = (
    "requests_per_second",
    "images_per_second",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "server_cpu_ms_per_request",
    "locust_cpu_ms_per_request",
)
SUM_KEYS = ("requests", "failures", "wrong_labels", "images_checked")
DERIVED_KEYS = ("fail_ratio",)


@dataclass(frozen=True)
class Target:
    """``numerator[key] / denominator[key]`` (or the inverse, for latencies) ≥ ``threshold``."""

    text: str
    numerator: str
    denominator: str
    key: str
    threshold: float
    lower_is_better: bool = False

    def ratio(self, num: dict[str, Any], den: dict[str, Any]) -> float | None:
        """The ratio for one round's two rows (better than the other when > 1), or None."""
        a, b = num.get(self.key), den.get(self.key)
        if not all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in (a, b)):
            return None
        return b / a if self.lower_is_better else a / b


_GW, _BENTO = "gateway embedded", "BentoML 1.4"
TARGETS: tuple[Target, ...] = (
    Target("gateway embedded ≥ 2x BentoML's requests/s", _GW, _BENTO, "requests_per_second", 2.0),
    Target("gateway embedded p99 below BentoML's", _GW, _BENTO, "p99_ms", 1.0, True),
    Target(
        "gateway embedded ahead of LitServe in requests/s",
        _GW,
        "LitServe",
        "requests_per_second",
        1.0,
    ),
    Target("gateway embedded p99 below LitServe's", _GW, "LitServe", "p99_ms", 1.0, True),
    Target(
        "gateway embedded ahead of MLServer in requests/s",
        _GW,
        "MLServer",
        "requests_per_second",
        1.0,
    ),
    Target("gateway embedded p99 below MLServer's", _GW, "MLServer", "p99_ms", 1.0, True),
    Target(
        "gateway embedded ≥ 50% of the Flask floor's requests/s",
        _GW,
        "Flask floor",
        "requests_per_second",
        0.5,
    ),
    Target(
        "gateway → model server gRPC ≥ 1.5x BentoML's requests/s",
        "gateway → model server gRPC",
        _BENTO,
        "requests_per_second",
        1.5,
    ),
    Target(
        "gateway embedded x64 ≥ 70% of the in-process decode + model images/s",
        "gateway embedded x64",
        "decode+model b64",
        "images_per_second",
        0.7,
    ),
)


def _rounds(rows: Sequence[dict[str, Any]]) -> dict[int, dict[str, dict[str, Any]]]:
    """Round number → row name → row, for the rows that ran."""
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row.get("status") == "ok":
            out.setdefault(row.get("round", 0), {})[row["name"]] = row
    return out


def judge(
    rows: Sequence[dict[str, Any]], targets: Sequence[Target] = TARGETS
) -> list[dict[str, Any]]:
    """Each target's per-round ratios, their median, and whether the median meets it."""
    rounds = _rounds(rows)
    verdicts = []
    for target in targets:
        ratios = []
        for by_name in (rounds[r] for r in sorted(rounds)):
            num, den = by_name.get(target.numerator), by_name.get(target.denominator)
            ratio = target.ratio(num, den) if num and den else None
            if ratio is not None:
                ratios.append(ratio)
        median = statistics.median(ratios) if ratios else None
        if median is None:
            met = None
        elif target.lower_is_better:  # a latency: strictly lower
            met = median > target.threshold
        else:
            met = median >= target.threshold
        verdicts.append(
            {
                "target": target.text,
                "threshold": target.threshold,
                "ratios": [round(r, 3) for r in ratios],
                "median": None if median is None else round(median, 3),
                "met": met,
            }
        )
    return verdicts


def median_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration, in first-seen order: the median of each measurement over
    the rounds it ran in, counts summed; ``status`` ok if any round ran, with the rounds that
    did not in ``reason``."""
    names: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        names.setdefault(row["name"], []).append(row)
    out = []
    for group in names.values():
        ok = [r for r in group if r["status"] == "ok"]
        merged = dict(group[0]) | {"rounds": len(group)}
        merged.pop("round", None)
        merged.pop("out", None)
        bad = next((r for r in group if r["status"] != "ok"), None)
        if bad is not None and ok:
            reason = f"ran in {len(ok)} of {len(group)} rounds; {bad['status']}: {bad['reason']}"
            merged |= {"status": "ok", "reason": reason}
        elif bad is not None:
            merged |= {"status": bad["status"], "reason": bad["reason"]}
        for key in MEDIAN_KEYS:
            values = [r[key] for r in ok if isinstance(r.get(key), int | float)]
            merged[key] = statistics.median(values) if values else None
        for key in SUM_KEYS:
            values = [r[key] for r in ok if isinstance(r.get(key), int)]
            merged[key] = sum(values) if values else None
        requests, failures = merged.get("requests"), merged.get("failures")
        merged["fail_ratio"] = failures / requests if requests and failures is not None else None
        out.append(merged)
    return out


def markdown(verdicts: Sequence[dict[str, Any]]) -> str:
    """The verdicts as a markdown table."""
    lines = [
        "| target | ratio per round | median | met |",
        "| --- | --- | ---: | --- |",
    ]
    for v in verdicts:
        per_round = ", ".join(f"{r:.3f}" for r in v["ratios"]) or "—"
        median = "—" if v["median"] is None else f"{v['median']:.3f}"
        met = (
            "not judged (a row did not run)" if v["met"] is None else ("yes" if v["met"] else "no")
        )
        lines.append(f"| {v['target']} | {per_round} | {median} | {met} |")
    return "\n".join(lines)
