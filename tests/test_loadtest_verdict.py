"""loadtest.verdict (the targets judged per round, medians over rounds) and compare --rounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import verdict
from loadtest.servers import ROOT


def row(name: str, rnd: int, rps: float, p99: float, **extra) -> dict:
    return {
        "name": name,
        "group": "ours",
        "target": "gateway",
        "batch_size": 1,
        "status": "ok",
        "reason": "",
        "note": "",
        "round": rnd,
        "requests_per_second": rps,
        "images_per_second": rps,
        "p50_ms": p99 / 3,
        "p95_ms": p99 / 2,
        "p99_ms": p99,
        "requests": int(rps * 10),
        "failures": 0,
        "wrong_labels": int(rps),
        "images_checked": int(rps * 10),
        "server_cpu_ms_per_request": 1000 / rps,
        "locust_cpu_ms_per_request": 0.5,
    } | extra


def rows_of_three_rounds() -> list[dict]:
    gateway = [(900, 80), (600, 120), (1000, 60)]
    bento = [(500, 300), (500, 100), (400, 300)]
    return [
        r
        for n, ((g, gp), (b, bp)) in enumerate(zip(gateway, bento, strict=True))
        for r in (row("gateway embedded", n, g, gp), row("BentoML 1.4", n, b, bp))
    ]


def by_target(verdicts: list[dict]) -> dict[str, dict]:
    return {v["target"]: v for v in verdicts}


def test_each_target_is_the_median_of_same_round_ratios():
    verdicts = by_target(verdict.judge(rows_of_three_rounds()))
    rps = verdicts["gateway embedded ≥ 2x BentoML's requests/s"]
    assert rps["ratios"] == [1.8, 1.2, 2.5] and rps["median"] == 1.8 and rps["met"] is False
    p99 = verdicts["gateway embedded p99 below BentoML's"]
    assert p99["ratios"] == [3.75, 0.833, 5.0] and p99["median"] == 3.75 and p99["met"] is True
    # rows that did not run: not judged, not failed
    floor = verdicts["gateway embedded ≥ 50% of the Flask floor's requests/s"]
    assert floor == {
        "target": "gateway embedded ≥ 50% of the Flask floor's requests/s",
        "threshold": 0.5,
        "ratios": [],
        "median": None,
        "met": None,
    }
    table = verdict.markdown(verdict.judge(rows_of_three_rounds()))
    assert "| gateway embedded ≥ 2x BentoML's requests/s | 1.80, 1.20, 2.50 | 1.80 | no |" in table
    assert "| gateway embedded p99 below BentoML's | 3.75, 0.83, 5.00 | 3.75 | yes |" in table
    assert "| — | — | not judged (a row did not run) |" in table


def test_a_threshold_met_exactly_counts_and_equal_p99_does_not():
    rows = [
        row("gateway embedded", 0, 1000, 100),
        row("BentoML 1.4", 0, 500, 100),
        row("Flask floor", 0, 2000, 10),
    ]
    verdicts = by_target(verdict.judge(rows))
    assert verdicts["gateway embedded ≥ 2x BentoML's requests/s"]["met"] is True
    assert verdicts["gateway embedded p99 below BentoML's"]["met"] is False
    assert verdicts["gateway embedded ≥ 50% of the Flask floor's requests/s"]["met"] is True


def test_failed_or_skipped_rows_and_other_rounds_are_not_paired():
    rows = [
        row("gateway embedded", 0, 1000, 50),
        row("BentoML 1.4", 0, 400, 100, status="error", reason="did not start"),
        row("gateway embedded", 1, 1000, 50),
        row("BentoML 1.4", 2, 250, 100),  # a round without the gateway's row
    ]
    v = by_target(verdict.judge(rows))["gateway embedded ≥ 2x BentoML's requests/s"]
    assert v["ratios"] == [] and v["met"] is None


def test_median_rows_fold_the_rounds():
    failed = row("LitServe", 1, 1, 1, status="error", reason="exited")
    rows = [*rows_of_three_rounds(), row("LitServe", 0, 700, 90), failed]
    medians = {r["name"]: r for r in verdict.median_rows(rows)}
    assert list(medians) == ["gateway embedded", "BentoML 1.4", "LitServe"]
    gw = medians["gateway embedded"]
    assert gw["rounds"] == 3 and "round" not in gw and gw["status"] == "ok"
    assert (gw["requests_per_second"], gw["p99_ms"]) == (900, 80)
    assert gw["requests"] == 9000 + 6000 + 10000 and gw["failures"] == 0
    lit = medians["LitServe"]
    assert (lit["status"], lit["reason"], lit["rounds"]) == ("error", "exited", 2)
    assert lit["requests_per_second"] == 700  # the median of the rounds that ran


@pytest.mark.integration
def test_compare_rounds_end_to_end(tmp_path):
    """Two rounds of both floors: a folder per round and row, medians, the verdict printed."""
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [
            sys.executable, "-m", "loadtest", "compare", "--users", "2", "--duration", "2s",
            "--images", "50", "--workers", "1", "--rounds", "2", "--out", str(out),
            "--only", "floor",
        ],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "compare.json").read_text())
    assert doc["settings"]["rounds"] == 2
    assert [(r["name"], r["round"]) for r in doc["rows"]] == [
        ("Flask floor", 0),
        ("WSGI floor", 0),
        ("Flask floor", 1),
        ("WSGI floor", 1),
    ]
    for r in doc["rows"]:
        assert r["status"] == "ok" and r["failures"] == 0 and r["requests"] > 0
        assert Path(r["out"]) == out / f"round-{r['round']}" / r["name"].lower().replace(" ", "-")
        assert (Path(r["out"]) / "summary.json").is_file()
    medians = {m["name"]: m for m in doc["medians"]}
    flask = [r for r in doc["rows"] if r["name"] == "Flask floor"]
    assert medians["Flask floor"]["rounds"] == 2
    assert medians["Flask floor"]["requests"] == sum(r["requests"] for r in flask)
    assert medians["Flask floor"]["requests_per_second"] == pytest.approx(
        sum(r["requests_per_second"] for r in flask) / 2
    )
    assert "each row the median of 2 rounds" in proc.stdout
    assert proc.stdout.count("| Flask floor |") == 1
    assert "| target | ratio per round | median | met |" in proc.stdout
    assert [v["met"] for v in doc["targets"]] == [None] * len(verdict.TARGETS)
