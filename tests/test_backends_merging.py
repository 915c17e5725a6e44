"""serving.backends.merging: concurrent gateway requests merged into one RPC, against the
in-test gRPC server (tests/support/fake_tfserving.py) through the real `GrpcBackend`."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from serving.backends import BackendInvalidRequest, BackendTimeout, BackendUnavailable
from serving.backends.grpc import GrpcBackend
from serving.backends.merging import MergingBackend
from serving.backends.rest import RestBackend
from serving.gateway.app import connect_backend
from serving.gateway.config import ConfigError, GatewayConfig
from tests.support.concurrency import call_concurrently
from tests.support.fake_tfserving import fake_probabilities


def _image(level: int) -> np.ndarray:
    """One image whose fake class is ``level`` (0-9): mean brightness level / 9."""
    return np.full((1, 28, 28, 1), level / 9, dtype=np.float32)


def _predict_requests(servicer) -> list[int]:
    """The row count of each Predict the fake server received."""
    return [r.inputs["images"].tensor_shape.dim[0].size for r in servicer.requests]


def test_concurrent_requests_travel_as_fewer_rpcs_and_each_gets_its_own_rows(fake):
    servicer, target = fake
    servicer.delay = 0.2  # the first RPC is slow: the others queue behind it and merge
    images = [_image(i % 10) for i in range(12)]
    with MergingBackend(GrpcBackend(target), batch_max_size=64, batch_timeout_ms=5) as backend:
        results = call_concurrently(backend.predict, images)
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
        results = call_concurrently(backend.predict, [_image(3)] * 6)
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


def test_two_merged_calls_can_be_in_flight_so_a_slow_one_holds_no_one_else(fake):
    servicer, target = fake
    servicer.delay = 0.5
    with MergingBackend(GrpcBackend(target), batch_timeout_ms=0) as backend:
        slow = threading.Thread(target=backend.predict, args=(_image(1),))
        slow.start()
        time.sleep(0.1)  # the first RPC is in flight
        started = time.monotonic()
        backend.predict(_image(2))  # goes out on the second batch thread at once
        assert time.monotonic() - started < 0.9  # not 0.4 s of waiting + its own 0.5 s
        slow.join()
    assert _predict_requests(servicer) == [1, 1]


def test_close_lets_queued_calls_finish_and_the_default_timeout_adds_the_batching_wait(fake):
    servicer, target = fake
    servicer.delay = 0.3
    backend = MergingBackend(GrpcBackend(target, timeout=4.0), batch_timeout_ms=50)
    assert backend.timeout == pytest.approx(4.05)
    with ThreadPoolExecutor(3) as pool:
        pending = [pool.submit(backend.predict, _image(i)) for i in (2, 4, 6)]
        time.sleep(0.02)  # queued, the batching wait not over yet
        backend.close()
        results = [f.result(timeout=5) for f in pending]
    assert [int(r.probabilities.argmax()) for r in results] == [2, 4, 6]


def test_a_rest_backend_is_merged_the_same_way(rest):
    state, url = rest
    with MergingBackend(RestBackend(url), batch_timeout_ms=50) as backend:
        results = call_concurrently(backend.predict, [_image(i) for i in (1, 5, 8)])
    assert [int(r.probabilities.argmax()) for r in results] == [1, 5, 8]
    predicts = [body for method, _, body in state.calls if method == "POST"]
    assert len(predicts) == 1 and len(predicts[0]["inputs"]["images"]) == 3


def test_gateway_remote_batching_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("GATEWAY_REMOTE_BATCHING", "false")
    assert GatewayConfig.from_env().remote_batching is False
    monkeypatch.setenv("GATEWAY_REMOTE_BATCHING", "maybe")
    with pytest.raises(ConfigError, match="GATEWAY_REMOTE_BATCHING"):
        GatewayConfig.from_env()
