"""``python -m loadtest paired``: settings parsing and usage errors, the report, a side running
another checkout's code, and an end-to-end run of two Flask floors loaded at the same time."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from loadtest import paired
from loadtest.servers import ROOT
from tests.support.cli import loadtest_main


def test_assignments_are_gateway_settings():
    assert paired.parse_assignments(["GATEWAY_THREADS=8", "GATEWAY_BATCH_TIMEOUT_MS=5"]) == (
        ("GATEWAY_BATCH_TIMEOUT_MS", "5"),
        ("GATEWAY_THREADS", "8"),
    )
    assert paired.parse_assignments(["GATEWAY_API_KEYS="]) == (("GATEWAY_API_KEYS", ""),)
    for bad in ("GATEWAY_THREADS", "THREADS=8", " GATEWAY_THREADS=8"):
        with pytest.raises(ValueError, match="expected GATEWAY_NAME=value"):
            paired.parse_assignments([bad])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--a", "THREADS=8"], "expected GATEWAY_NAME=value, got 'THREADS=8'"),
        (["--b-checkout", "/"], "/ is not a checkout of this project (no serving/gateway there)"),
        (["--model-dir", "/nonexistent"], "no exported version under /nonexistent"),
        (["--processes", "2"], "--processes must be 1 (one Locust per side)"),
        (["--rounds", "0"], "argument --rounds"),
    ],
)
def test_usage_errors_are_one_line_exit_2(capsys, tmp_path, args, message):
    assert loadtest_main(["paired", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


def test_report_ratio_and_table():
    a = {"requests_per_second": 500.0, "p99_ms": 80.0, "requests": 100, "failures": 0}
    rounds = [
        {
            "a": {**a, "server_cpu_ms_per_request": 2.0},
            "b": {**a, "server_cpu_ms_per_request": 1.5},
        },
        {
            "a": {**a, "server_cpu_ms_per_request": 2.0},
            "b": {**a, "server_cpu_ms_per_request": 2.2},
        },
    ]
    for r in rounds:
        r["cpu_ratio_b_over_a"] = paired.cpu_ratio(r["a"], r["b"])
    assert [r["cpu_ratio_b_over_a"] for r in rounds] == [0.75, 1.1]
    assert paired.cpu_ratio({"server_cpu_ms_per_request": None}, rounds[0]["b"]) is None
    report = {
        "server": "floor",
        "users": 8,
        "duration": "5s",
        "sides": {"a": "defaults", "b": "GATEWAY_THREADS=8"},
        "rounds": rounds,
        "median_cpu_ratio_b_over_a": 0.925,
    }
    table = paired.markdown(report)
    assert "A: defaults. B: GATEWAY_THREADS=8." in table
    assert "| 0 | 500 | 80 | 2.000 | 500 | 80 | 1.500 | 0.750 | 0 |" in table
    assert table.endswith("Median B/A CPU per request: 0.925")


@pytest.mark.integration
def test_a_side_runs_its_own_checkout(tmp_path):
    """The server of a side with another checkout runs that checkout's code."""
    copy = tmp_path / "checkout"
    for part in ("serving", "loadtest"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    floors = copy / "loadtest" / "floors.py"
    floors.write_text(floors.read_text().replace('return "ok"', 'return "ok from the copy"'))
    settings = paired.PairedSettings(
        server="floor",
        model_dir=tmp_path,
        out=tmp_path / "out",
        sides=(paired.Side("a", (), copy), paired.Side("b")),
    )
    for side, answer in ((settings.sides[0], "ok from the copy"), (settings.sides[1], "ok")):
        with paired.start_side(side, settings) as server:
            assert requests.get(f"{server.url}/readyz", timeout=5).text == answer


@pytest.mark.integration
def test_two_floors_loaded_together_end_to_end(tmp_path):
    out = tmp_path / "paired"
    proc = subprocess.run(
        [
            sys.executable, "-m", "loadtest", "paired", "--server", "floor",
            "--a", "GATEWAY_THREADS=2", "--b", "GATEWAY_THREADS=4", "GATEWAY_WORKERS=1",
            "--users", "2", "--duration", "2s", "--rounds", "2", "--images", "50",
            "--out", str(out),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "paired.json").read_text())
    assert doc["server"] == "floor" and doc["users"] == 2 and doc["duration"] == "2s"
    assert doc["sides"] == {"a": "GATEWAY_THREADS=2", "b": "GATEWAY_THREADS=4 GATEWAY_WORKERS=1"}
    assert len(doc["rounds"]) == 2 and doc["failures"] == 0
    for i, r in enumerate(doc["rounds"]):
        for side in ("a", "b"):
            row = r[side]
            assert row["requests"] > 0 and row["failures"] == 0, row
            assert 0 < row["server_cpu_ms_per_request"] < 1000, row
            assert (out / f"round{i}-{side}" / "summary.json").is_file()
        want = round(r["b"]["server_cpu_ms_per_request"] / r["a"]["server_cpu_ms_per_request"], 3)
        assert r["cpu_ratio_b_over_a"] == want
    ratios = [r["cpu_ratio_b_over_a"] for r in doc["rounds"]]
    assert doc["median_cpu_ratio_b_over_a"] == statistics.median(ratios)
    assert proc.stdout.strip() == (out / "paired.md").read_text().strip()
    assert Path(out / "round1-b" / "locust_stats.csv").is_file()
