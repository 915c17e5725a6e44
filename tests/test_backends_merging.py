"""serving.backends.merging: concurrent gateway requests merged into one RPC, against the
in-test gRPC server (tests/support/fake_tfserving.py) through the real `GrpcBackend`."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from serving.backends import BackendInvalidRequest, BackendTimeout, BackendUnavailable
from serving.backends.grpc import GrpcBackend
from serving.backends.merging import MergingBackend
from serving.gateway.app import connect_backend
from serving.gateway.config import GatewayConfig
from tests.support.fake_tfserving import fake_probabilities


def _image(level: int) -> np.ndarray:
    """One image whose fake class is ``level`` (0-9): mean brightness level / 9."""
    return np.full((1, 28, 28, 1), level / 9, dtype=np.float32)


def _predict_requests(servicer) -> list[int]:
    """The row count of each Predict the fake server received."""
    return [r.inputs["images"].tensor_shape.dim[0].size for r in servicer.requests]


def _concurrently(backend, batches):
    """Call ``backend.predict`` on every batch at once (one thread each); results or errors."""
    start = threading.Barrier(len(batches))

    def one(batch):
        start.wait()
        try:
            return backend.predict(batch)
        except Exception as exc:  # the test inspects what each caller got
            return exc

    with ThreadPoolExecutor(len(batches)) as pool:
        return list(pool.map(one, batches))


def test_concurrent_requests_travel_as_fewer_rpcs_and_each_gets_its_own_rows(fake):
    servicer, target = fake
    servicer.delay = 0.2  # the first RPC is slow: the others queue behind it and merge
    images = [_image(i % 10) for i in range(12)]
    with MergingBackend(GrpcBackend(target), batch_max_size=64, batch_timeout_ms=5) as backend:
        results = _concurrently(backend, images)
    rows = _predict_requests(servicer)
    assert sum(rows) == 12 and len(rows) <= 3, rows  # 12 requests in at most 3 RPCs
    assert max(rows) >= 6
    for image, result in zip(images, results, strict=True):
        np.testing.assert_allclose(result.probabilities, fake_probabilities(image), rtol=1e-6)
        assert result.probabilities.shape == (1, 10) and result.model_version == 7


def test_a_request_larger_than_a_batch_goes_alone_in_one_rpc(fake):
    servicer, target = fake
    batch = np.concatenate([_image(i % 10) for i in range(10)])
    with MergingBackend(GrpcBackend(target), batch_max_size=4) as backend:
        result = backend.predict(batch)
    assert _predict_requests(servicer) == [10]
    np.testing.assert_allclose(result.probabilities, fake_probabilities(batch), rtol=1e-6)


def test_a_failed_merged_rpc_fails_each_of_its_callers_with_the_backend_error(fake):
    servicer, target = fake
    servicer.fail = [grpc.StatusCode.INVALID_ARGUMENT] * 6  # enough for every RPC
    with MergingBackend(GrpcBackend(target), batch_timeout_ms=20) as backend:
        results = _concurrently(backend, [_image(3)] * 6)
        assert len(servicer.requests) < 6  # merged, and not retried
        assert all(type(r) is BackendInvalidRequest for r in results), results
        assert {str(r) for r in results} == {
            f"Predict fashion_mnist on {target}: scripted INVALID_ARGUMENT"
        }
        # the backend still serves once the backend does
        servicer.fail, servicer.delay = [], 0.0
        assert backend.predict(_image(5)).probabilities.argmax() == 5


def test_a_caller_waits_no_longer_than_its_timeout(fake):
    servicer, target = fake
    servicer.delay = 1.0
    inner = GrpcBackend(target, timeout=5.0)
    with MergingBackend(inner, timeout=0.2) as backend, pytest.raises(BackendTimeout) as info:
        backend.predict(_image(1))
    assert str(info.value) == "backend did not answer within 0.2s"
    assert info.value.code == "backend_timeout"


def test_status_is_the_wrapped_backends_and_close_refuses_later_calls(fake):
    _, target = fake
    backend = MergingBackend(GrpcBackend(target))
    assert [s.version for s in backend.status()] == [9, 8, 7, 3]
    backend.close()
    with pytest.raises(BackendUnavailable, match="merging-backend is closed"):
        backend.predict(_image(1))


def test_the_gateway_merges_remote_requests_unless_told_not_to(fake):
    _, target = fake
    merged = connect_backend(GatewayConfig(backend=f"grpc://{target}"))
    plain = connect_backend(GatewayConfig(backend=f"grpc://{target}", remote_batching=False))
    try:
        assert isinstance(merged, MergingBackend) and isinstance(merged.inner, GrpcBackend)
        assert merged.batcher.max_batch_size == 64 and merged.batcher.batch_timeout_s == 0.002
        assert isinstance(plain, GrpcBackend)
    finally:
        merged.close()
        plain.close()
