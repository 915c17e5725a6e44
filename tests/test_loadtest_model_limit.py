"""loadtest.model_limit: positive in-process rates on a tiny budget, in-process and as a CLI."""

from __future__ import annotations

import contextlib
import json

import pytest

from loadtest import model_limit
from loadtest.images import load_images
from loadtest.preprocess import REFERENCE_IMAGES
from loadtest.registry import Context

pytestmark = pytest.mark.slow  # needs the session's exported model

KEYS = {f"{cell}_images_per_second" for cell in model_limit.CELLS}


def test_measure_returns_positive_rates(exported_model):
    pngs = model_limit.load_pngs(REFERENCE_IMAGES)
    result = model_limit.measure(exported_model, pngs, budget_s=0.05)
    assert set(result) >= KEYS
    assert all(result[k] > 0 for k in KEYS)
    # decoding is work on top of the same model call: it cannot make a batch faster
    assert result["decode_model_b64_images_per_second"] < result["model_b64_images_per_second"]
    assert (result["budget_seconds"], result["model_version"], result["images"]) == (0.05, 1, 4)


def test_compare_rows_come_from_a_subprocess_on_the_load_test_images(exported_model, monkeypatch):
    monkeypatch.setenv(model_limit.BUDGET_ENV, "0.05")
    (entry,) = model_limit.configurations()
    assert (entry.name, entry.group) == ("model limit", "limit")
    images = load_images(2)
    with contextlib.ExitStack() as stack:
        rows = entry.measure(Context(exported_model, {}, stack), images)
    assert [(r["name"], r["batch_size"]) for r in rows] == [
        ("model limit b1", 1),
        ("model limit b64", 64),
        ("decode+model b1", 1),
        ("decode+model b64", 64),
    ]
    for r in rows:
        assert r["images_per_second"] > 0
        assert r["requests_per_second"] == round(r["images_per_second"] / r["batch_size"], 1)


def test_cli_rejects_a_missing_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        model_limit.main(["--model-dir", str(tmp_path)])
    assert info.value.code == 2
    assert f"no SavedModel version under {tmp_path}" in capsys.readouterr().err


def test_cli_prints_a_table_and_writes_json(exported_model, tmp_path, capsys):
    out = tmp_path / "limit.json"
    args = ["--model-dir", str(exported_model), "--images", str(REFERENCE_IMAGES)]
    assert model_limit.main([*args, "--budget", "0.05", "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())) >= KEYS
    table = capsys.readouterr().out
    assert table.count("\n| model only |") == 2 and table.count("\n| decode PNG + model |") == 2
