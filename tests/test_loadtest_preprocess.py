"""loadtest.preprocess runs end to end on a few test images (the numbers themselves are
recorded in docs/BENCHMARKS.md, not asserted here beyond what must hold exactly)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from loadtest import preprocess as preprocess_bench


@pytest.mark.slow
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


@pytest.mark.slow
def test_benchmark_rejects_a_missing_model(tmp_path, capsys):
    assert preprocess_bench.main(["--model", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("error: no model at ")


def _garment() -> np.ndarray:
    """A synthetic 28x28 'test image': a light-on-black blob with a gradient and a faint part."""
    yy, xx = np.mgrid[:28, :28]
    body = np.clip(1.2 - np.hypot((yy - 14) / 12, (xx - 14) / 8), 0, 1) * 300
    body[4:24, 22:25] = 40  # a faint strap
    return np.clip(body, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("light", [False, True])
def test_cutout_is_a_consistent_matte_of_the_photo(light):
    x = _garment()
    img = preprocess_bench._cutout_rgba(x, light=light)
    assert img.mode == "RGBA" and img.size == (112, 112)
    rgba = np.asarray(img).astype(np.float64)
    alpha = rgba[..., 3] / 255
    assert (alpha == 0).any() and (alpha == 1).any()
    assert ((alpha > 0) & (alpha < 1)).sum() > 500  # soft edges and the faint strap
    assert not rgba[alpha == 0].any()  # fully transparent pixels store black
    # On the white page the cutout reproduces the photo (255 - tone x the 4x test image) up to
    # one tone per image, except where the tool's soft edge is too transparent for it
    g = np.asarray(Image.fromarray(x).resize((112, 112), Image.Resampling.BICUBIC), np.float64)
    own = 255 - rgba[..., :3] @ [0.299, 0.587, 0.114]
    on_white = alpha * own
    inside = (g > 60) & (own < 250)
    tone = on_white[inside] / g[inside]
    assert tone.std() < 0.01
    lo, hi = (0.25, 0.6) if light else (0.85, 1.0)
    assert lo - 0.01 <= tone.mean() <= hi + 0.01


def test_masked_cutout_keeps_the_photos_pixels():
    x = _garment()
    clean = np.asarray(preprocess_bench._cutout_rgba(x, light=True)).astype(np.float64)
    masked = np.asarray(preprocess_bench._cutout_rgba(x, light=True, masked=True)).astype(
        np.float64
    )
    np.testing.assert_array_equal(masked[..., 3], clean[..., 3])  # the same alpha
    alpha = masked[..., 3] / 255
    partial = (alpha > 0.05) & (alpha < 0.95)
    own_clean = 255 - clean[..., :3] @ [0.299, 0.587, 0.114]
    own_masked = 255 - masked[..., :3] @ [0.299, 0.587, 0.114]
    # the masked colour is already mixed with the page: its darkness is the clean colour's
    # times the coverage (within rounding)
    np.testing.assert_allclose(own_masked[partial], alpha[partial] * own_clean[partial], atol=3)
