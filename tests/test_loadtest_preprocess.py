"""loadtest.preprocess runs end to end on a few test images (the numbers themselves are
recorded in docs/BENCHMARKS.md, not asserted here beyond what must hold exactly)."""

from __future__ import annotations

import json

import pytest

from loadtest import preprocess as preprocess_bench

pytestmark = pytest.mark.slow


def test_benchmark_runs_and_png_is_lossless(
    exported_model, fashion_mnist_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(fashion_mnist_dir))
    out = tmp_path / "bench.json"
    code = preprocess_bench.main(
        [
            "--model",
            str(exported_model),
            "--limit",
            "64",
            "--timing-images",
            "4",
            "--repeat",
            "1",
            "--json",
            str(out),
        ]
    )
    results = json.loads(out.read_text())
    assert results["images"] == 64
    assert set(results["alterations"]) == set(preprocess_bench.ALTERATIONS)
    # the dataset's own form must classify exactly like the raw tensors
    assert results["alterations"]["png"]["accuracy"] == results["raw_accuracy"]
    assert results["alterations"]["png"]["delta"] == 0.0
    misses = [
        n for n, r in results["alterations"].items() if r["delta"] < -preprocess_bench.QUALITY_BAR
    ]
    assert code == (1 if misses else 0)
    table = capsys.readouterr().out
    refs = results["reference_images"]
    assert [r["file"] for r in refs] == ["ankle_boot.png", "bag.png", "trouser.png", "tshirt.png"]
    assert table.count("\n| `") == len(preprocess_bench.ALTERATIONS) + len(refs)


def test_benchmark_rejects_a_missing_model(tmp_path, capsys):
    assert preprocess_bench.main(["--model", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("error: no model at ")
