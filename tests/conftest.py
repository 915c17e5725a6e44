"""Session-wide fixtures shared by the whole test suite.

- ``fashion_mnist_dir``: Path of the folder with the four official IDX files
  (``$FASHION_MNIST_DIR``; `make test` sets it); tests that use it are skipped when it is
  unset or lacks the files (and fail under ``CI``).
- ``dataset``: the loaded :class:`training.data.Dataset` (uint8 arrays).
- ``exported_model``: Path of a base dir ``.../fashion_mnist`` holding version ``1`` of a model
  trained quickly (3000 images, 1 epoch, seed 0; about 75% test accuracy) with its
  ``metrics.json``, exported once per session. Treat it as read-only: copy it to add versions.
- ``grpc_server`` / ``fake`` and ``rest_server`` / ``rest``: the in-test TF Serving over gRPC
  and REST (tests/support/fake_tfserving.py), one server per module, its script reset per test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from hypothesis import settings  # noqa: E402

from tests.support.ci import in_ci, missing  # noqa: E402

# Property-based tests: modest example counts everywhere; under CI the examples are derived
# from the test itself (derandomize) and nothing is stored, so a CI run is reproducible.
settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, database=None)
settings.load_profile("ci" if in_ci() else "dev")

# The quick model behind `exported_model`: 3000 training images, 1 epoch, fixed seed.
FIXTURE_TRAIN_SAMPLES = 3000
FIXTURE_SEED = 0


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The folder with the four official Fashion-MNIST .gz files (skip if unavailable)."""
    env = os.environ.get("FASHION_MNIST_DIR")
    path = Path(env) if env else None
    if path is None or not (path / "train-images-idx3-ubyte.gz").is_file():
        message = (
            f"Fashion-MNIST IDX files not found in {path}; set FASHION_MNIST_DIR"
            if path
            else "FASHION_MNIST_DIR is not set: name the folder with the four Fashion-MNIST files"
        )
        missing(message)  # CI always has the data: a skip there would hide most tests
    return path


@pytest.fixture(scope="session")
def dataset(fashion_mnist_dir: Path):
    """Fashion-MNIST loaded (and verified) once per session."""
    from training.data import load_fashion_mnist

    return load_fashion_mnist(fashion_mnist_dir)


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory, dataset) -> Path:
    """Base dir ``.../fashion_mnist`` with version 1 of a quickly trained model (read-only)."""
    from training.pipeline import run_training
    from training.train import RECIPES

    base = tmp_path_factory.mktemp("models") / "fashion_mnist"
    recipe = RECIPES["lesson"].replace(
        epochs=1, max_train_samples=FIXTURE_TRAIN_SAMPLES, seed=FIXTURE_SEED
    )
    run_training(dataset, recipe, export_dir=base, version=1, progress=False, plots=True)
    return base


@pytest.fixture(scope="module")
def grpc_server():
    """The in-test gRPC TF Serving (tests/support/fake_tfserving.py): (servicer, target)."""
    from tests.support.fake_tfserving import fake_grpc_server  # gRPC only where it is used

    with fake_grpc_server() as server:
        yield server


@pytest.fixture
def fake(grpc_server):
    """`grpc_server` with its script reset: no failures, no delay, no requests recorded."""
    servicer, target = grpc_server
    servicer.fail, servicer.delay, servicer.requests = [], 0.0, []
    servicer.use_float_val, servicer.next_details = False, None
    return servicer, target


@pytest.fixture(scope="module")
def rest_server():
    """The in-test REST TF Serving (tests/support/fake_tfserving.py): (state, base URL)."""
    from tests.support.fake_tfserving import fake_rest_server

    with fake_rest_server() as server:
        yield server


@pytest.fixture
def rest(rest_server):
    """`rest_server` with its script reset: no scripted answers, no delay, no calls recorded."""
    state, url = rest_server
    state.script, state.delay, state.calls, state.row_format = [], 0.0, [], False
    state.versions = [(1, "AVAILABLE"), (2, "AVAILABLE"), (3, "LOADING")]
    return state, url
