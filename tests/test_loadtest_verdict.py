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
    assert (
        "| gateway embedded ≥ 2x BentoML's requests/s | 1.800, 1.200, 2.500 | 1.800 | no |" in table
    )
    assert "| gateway embedded p99 below BentoML's | 3.750, 0.833, 5.000 | 3.750 | yes |" in table
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


def test_the_verdict_uses_unrounded_ratios_and_an_even_count_of_rounds():
    # 1999.9 / 1000 rounds to 2.000 but is short of 2x; two rounds: the median is their mean
    rows = [
        row("gateway embedded", 0, 1999.9, 10),
        row("BentoML 1.4", 0, 1000, 20),
        row("gateway embedded", 1, 1999.9, 10),
        row("BentoML 1.4", 1, 1000, 40),
        row("gateway embedded", 2, 1999.9, 10) | {"requests_per_second": float("nan")},
        row("BentoML 1.4", 2, 1000, 40),
    ]
    verdicts = by_target(verdict.judge(rows))
    rps = verdicts["gateway embedded ≥ 2x BentoML's requests/s"]
    # round 2's NaN is not a ratio
    assert rps["ratios"] == [2.0, 2.0] and rps["median"] == 2.0 and rps["met"] is False
    p99 = verdicts["gateway embedded p99 below BentoML's"]
    assert p99["ratios"] == [2.0, 4.0, 4.0] and p99["median"] == 4.0 and p99["met"] is True
    json.dumps(verdict.judge(rows), allow_nan=False)  # no NaN reaches compare.json


def test_median_rows_cover_every_row_measurement():
    from loadtest.compare import ROW_KEYS

    folded = set(verdict.MEDIAN_KEYS) | set(verdict.SUM_KEYS) | set(verdict.DERIVED_KEYS)
    assert set(ROW_KEYS) <= folded


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
    assert gw["fail_ratio"] == 0.0
    lit = medians["LitServe"]
    assert (lit["status"], lit["rounds"]) == ("ok", 2)
    assert lit["reason"] == "ran in 1 of 2 rounds; error: exited"
    assert lit["requests_per_second"] == 700  # the median of the rounds that ran
    never = verdict.median_rows([failed])[0]
    assert (never["status"], never["reason"], never["requests"], never["fail_ratio"]) == (
        "error",
        "exited",
        None,
        None,
    )


def test_fail_ratio_is_recomputed_from_the_summed_counts():
    rows = [
        row("gateway embedded", 0, 100, 10, requests=1000, failures=10, fail_ratio=0.01),
        row("gateway embedded", 1, 100, 10, requests=3000, failures=0, fail_ratio=0.0),
    ]
    assert verdict.median_rows(rows)[0]["fail_ratio"] == 10 / 4000


def test_compare_reports_a_failing_measurement_and_goes_on(tmp_path):
    from loadtest import compare
    from loadtest.registry import Measurement

    seen = []

    def broken(ctx, images):
        raise RuntimeError("model limit failed (1): no model here\nTraceback ...")

    def counted(ctx, images):
        seen.append(images)
        return [{"name": "count", "batch_size": 1, "images_per_second": float(len(images))}]

    entries = [Measurement("broken", broken), Measurement("count", counted)]
    settings = compare.Settings(model_dir=tmp_path, out=tmp_path / "out", images=20, rounds=2)
    rows = compare.run_compare(entries, settings)
    assert [(r["name"], r["status"], r["round"]) for r in rows] == [
        ("broken", "error", 0),
        ("count", "ok", 0),
        ("broken", "error", 1),
        ("count", "ok", 1),
    ]
    assert rows[0]["reason"] == "model limit failed (1): no model here"
    assert rows[1]["images_per_second"] == 20.0
    assert len(seen) == 2 and seen[0] is seen[1]  # the images are loaded once per run


@pytest.mark.integration
def test_compare_rounds_end_to_end(exported_model, tmp_path):
    """Two rounds of both floors: a folder per round and row, medians, the verdict printed."""
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [
            sys.executable, "-m", "loadtest", "compare", "--model-dir", str(exported_model),
            "--users", "2", "--duration", "2s",
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
