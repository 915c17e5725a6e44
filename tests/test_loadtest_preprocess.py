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
    argv = ["--model", str(exported_model), "--limit", "64", "--timing-images", "4"]
    argv += ["--repeat", "1", "--json", str(out)]
    measured = []
    real_run = preprocess_bench.run

    def run_once(*args):
        # the measurement runs once; the second main() below reuses its numbers
        if not measured:
            measured.append(real_run(*args))
        return measured[0]

    monkeypatch.setattr(preprocess_bench, "run", run_once)
    # A bar no alteration can miss (a delta is >= -100 points): exit 0, nothing reported.
    monkeypatch.setattr(preprocess_bench, "QUALITY_BAR", 100.0)
    assert preprocess_bench.main(argv) == 0
    captured = capsys.readouterr()
    assert "below the" not in captured.err
    results = json.loads(out.read_text())
    assert results["images"] == 64
    assert set(results["alterations"]) == set(preprocess_bench.ALTERATIONS)
    # the dataset's own form must classify exactly like the raw tensors
    assert results["alterations"]["png"]["accuracy"] == results["raw_accuracy"]
    assert results["alterations"]["png"]["delta"] == 0.0
    table = captured.out
    refs = results["reference_images"]
    assert [r["file"] for r in refs] == ["ankle_boot.png", "bag.png", "trouser.png", "tshirt.png"]
    assert table.count("\n| `") == len(preprocess_bench.ALTERATIONS) + len(refs)
    # A bar every alteration misses (a delta is < 100 points): exit 1, all of them named.
    monkeypatch.setattr(preprocess_bench, "QUALITY_BAR", -100.0)
    assert preprocess_bench.main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"below the -100-point bar: {', '.join(results['alterations'])}"
    assert len(measured) == 1


def test_benchmark_rejects_a_missing_model(tmp_path, capsys):
    assert preprocess_bench.main(["--model", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("error: no model at ")
