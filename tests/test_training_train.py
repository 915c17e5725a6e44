"""Recipes, the input pipeline and its augmentation, early stopping, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from training.cli import FILTER_NAMES


def test_cli_filter_names_match_the_kernels() -> None:
    from training.visualize import FILTERS

    assert tuple(sorted(FILTERS)) == FILTER_NAMES


def test_recipes() -> None:
    from training.train import RECIPES

    full, quick, lesson = RECIPES["full"], RECIPES["quick"], RECIPES["lesson"]
    assert full.validation_fraction > 0 and full.patience > 0  # early stopping on validation
    assert quick.epochs < full.epochs
    assert (lesson.optimizer, lesson.batch_size, lesson.epochs, lesson.learning_rate) == (
        "adam",
        32,
        5,
        1e-3,
    )
    assert not (lesson.flip or lesson.shift or lesson.ema or lesson.label_smoothing)
    # test-time flips in the default only: the quick model is the one the benchmarks serve
    assert (full.test_time_flip, quick.test_time_flip, lesson.test_time_flip) == (
        True,
        False,
        False,
    )
    assert (
        full.replace(epochs=3, seed=None).epochs == 3 and full.replace(seed=None).seed == full.seed
    )


def _batch() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(64, 28, 28, 1), dtype=np.uint8)


def test_flip_only_mirrors_some_images_and_is_seeded() -> None:
    import tensorflow as tf

    from training.train import augment_batch

    x = _batch()
    out = augment_batch(tf.constant(x), tf.constant([1, 2], tf.int64), flip=True, shift=0).numpy()
    same = np.all(out == x, axis=(1, 2, 3))
    mirrored = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored)
    assert 10 < mirrored.sum() < 54
    again = augment_batch(tf.constant(x), tf.constant([1, 2], tf.int64), flip=True, shift=0).numpy()
    np.testing.assert_array_equal(out, again)
    other = augment_batch(tf.constant(x), tf.constant([1, 3], tf.int64), flip=True, shift=0).numpy()
    assert not np.array_equal(out, other)


def _shifted(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Output (x, y) reads input (x+dx, y+dy), zeros outside."""
    out = np.zeros_like(img)
    h, w = img.shape[:2]
    for y in range(h):
        for x in range(w):
            sy, sx = y + dy, x + dx
            if 0 <= sy < h and 0 <= sx < w:
                out[y, x] = img[sy, sx]
    return out


def test_shift_moves_each_image_by_at_most_one_pixel() -> None:
    import tensorflow as tf

    from training.train import augment_batch

    x = _batch()
    out = augment_batch(tf.constant(x), tf.constant([7, 7], tf.int64), flip=False, shift=1).numpy()
    assert out.shape == x.shape and out.dtype == np.uint8
    seen = set()
    for img, res in zip(x, out, strict=True):
        matches = [
            (dx, dy)
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
            if np.array_equal(res, _shifted(img, dx, dy))
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) >= 6  # the nine offsets are all in use


def test_erasing_replaces_one_rectangle_in_about_the_given_share_of_images() -> None:
    import tensorflow as tf

    from training.train import ERASE_AREA, augment_batch

    x = np.zeros((2000, 28, 28, 1), np.uint8)  # any erased pixel shows as noise (255/256 nonzero)
    out = augment_batch(
        tf.constant(x), tf.constant([3, 4], tf.int64), flip=False, shift=0, erase=0.5
    ).numpy()
    changed = out[..., 0] != 0
    erased = changed.any(axis=(1, 2))
    assert 0.45 < erased.mean() < 0.55
    for img in changed[erased][:200]:
        rows, cols = np.nonzero(img.any(axis=1))[0], np.nonzero(img.any(axis=0))[0]
        box = img[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.mean() > 0.95  # one filled rectangle (a noise pixel may be 0)
        area = box.size / (28 * 28)
        assert ERASE_AREA[0] / 2 <= area <= ERASE_AREA[1] * 1.2
    again = augment_batch(
        tf.constant(x), tf.constant([3, 4], tf.int64), flip=False, shift=0, erase=0.5
    ).numpy()
    np.testing.assert_array_equal(out, again)
    untouched = augment_batch(
        tf.constant(_batch()), tf.constant([3, 4], tf.int64), flip=False, shift=0, erase=0.0
    ).numpy()
    np.testing.assert_array_equal(untouched, _batch())


def test_make_dataset_scales_and_smooths() -> None:
    from training.train import RECIPES, make_dataset

    x = _batch()[:, :, :, 0]
    y = np.arange(64, dtype=np.uint8) % 10
    recipe = RECIPES["full"].replace(batch_size=16, label_smoothing=0.1)
    images, labels = next(iter(make_dataset(x, y, recipe, training=True)))
    assert images.shape == (16, 28, 28, 1) and images.dtype.name == "float32"
    assert float(images.numpy().min()) >= 0.0 and float(images.numpy().max()) <= 1.0
    lab = labels.numpy()
    np.testing.assert_allclose(lab.sum(axis=1), 1.0, rtol=1e-6)
    assert sorted(set(np.round(lab.ravel(), 4))) == [0.01, 0.91]
    # evaluation: no shuffling, no augmentation, no smoothing
    images, labels = next(iter(make_dataset(x, y, recipe, training=False)))
    np.testing.assert_allclose(images.numpy()[..., 0], x[:16] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(labels.numpy().argmax(axis=1), y[:16])
    assert labels.numpy().max() == 1.0


def test_early_stopping_keeps_the_best_validated_weights() -> None:
    from training.model import build_model
    from training.train import _BestOnValidation

    model = build_model(seed=0)
    cb = _BestOnValidation(patience=2)
    cb.set_model(model)
    model.stop_training = False  # as fit() sets it
    for epoch, acc in enumerate([0.5, 0.7, 0.6, 0.65]):
        cb.on_epoch_begin(epoch)
        if epoch == 1:
            marker = [w.copy() for w in model.get_weights()]
        cb.on_test_end({"accuracy": acc})
        model.layers[-1].bias.assign(np.full(10, epoch, np.float32))  # weights move on
        cb.on_epoch_end(epoch)
        assert model.stop_training is (epoch == 3)
    assert (cb.best, cb.best_epoch) == (0.7, 1)
    for a, b in zip(cb.best_weights, marker, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_training_is_reproducible_and_learns(dataset) -> None:
    from training.train import RECIPES, train

    # EMA on, with a short horizon: 0.999 would barely move from the initial weights in 34 steps.
    recipe = RECIPES["full"].replace(
        epochs=2, max_train_samples=1200, batch_size=64, seed=11, ema_momentum=0.9
    )
    first = train(dataset, recipe, progress=False)
    second = train(dataset, recipe, progress=False)
    for a, b in zip(first.model.get_weights(), second.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert first.history == second.history
    assert first.epochs_run == 2 and len(first.history["val_accuracy"]) == 2
    assert first.history["val_accuracy"][-1] > 0.5  # 120 validation images, 10 classes
    third = train(dataset, recipe.replace(seed=12), progress=False)
    assert not np.array_equal(third.model.get_weights()[0], first.model.get_weights()[0])


def test_ema_momentum_is_capped_for_short_runs() -> None:
    from training.train import RECIPES, effective_ema_momentum

    full, quick = RECIPES["full"], RECIPES["quick"]
    # the measured recipes keep their momentum (full: 18 x 844 steps, quick: 2 x 422)
    assert effective_ema_momentum(full, 18 * 844) == full.ema_momentum == 0.999
    assert effective_ema_momentum(quick, 2 * 422) == quick.ema_momentum == 0.99
    # a 200-step run averages over ~40 steps, not ~1000 (which exported a 54% model)
    assert effective_ema_momentum(full, 200) == pytest.approx(0.975)
    assert effective_ema_momentum(full, 1) == pytest.approx(0.5)
