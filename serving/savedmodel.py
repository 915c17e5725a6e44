"""Versioned SavedModel loading, shared by the model server and the gateway's embedded backend.

A base path holds one folder per integer version, as TF Serving expects::

    models/fashion_mnist/1/saved_model.pb
    models/fashion_mnist/2/saved_model.pb
    models/fashion_mnist/.tmp-3/...          # being written: ignored

Usage::

    from serving.savedmodel import ModelManager, VersionPolicy

    manager = ModelManager("fashion_mnist", "models/fashion_mnist", VersionPolicy.latest(1))
    manager.start()                      # polls the base path every second in a thread
    manager.wait_until_available(60)
    version, outputs = manager.predict({INPUT_KEY: batch})
    manager.close()

`LoadedModel` wraps one version (loaded into a TensorFlow Session, as TF Serving does); `ModelManager` follows TF Serving's
"availability preserving" policy: a new version is loaded before the version it replaces is
unloaded, and a version being unloaded waits until the requests that hold it have finished.
This module imports TensorFlow: only the model server and the embedded backend use it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import dtypes
from tensorflow_serving.apis import prediction_log_pb2

from serving.backends.types import VersionStatus
from serving.contract import SIGNATURE_NAME, WARMUP_FILE, list_versions
from serving.litemodel import TFLITE_FILE, LiteSignature

log = logging.getLogger(__name__)

SERVE_TAG = "serve"
#: Signature keys TensorFlow adds for itself: in the metadata, never served.
_INTERNAL_SIGNATURES = frozenset({"__saved_model_init_op", "__saved_model_train_op"})


class ModelError(Exception):
    """Base class of the errors raised here; ``code`` is the gRPC status name it maps to."""

    code = "UNKNOWN"


class InvalidInput(ModelError, ValueError):
    """The request does not fit the signature (names, dtype, shape)."""

    code = "INVALID_ARGUMENT"


class ServableNotFound(ModelError, LookupError):
    """No loaded version matches the request (TF Serving's NOT_FOUND)."""

    code = "NOT_FOUND"


class UnknownLabel(ModelError, LookupError):
    """A version label that the config does not define (TF Serving: INVALID_ARGUMENT)."""

    code = "INVALID_ARGUMENT"


class LoadError(ModelError):
    """A version could not be loaded (missing/corrupt SavedModel, failing warmup)."""


class State(str, Enum):
    """A version's lifecycle state, named as in TF Serving's ModelVersionStatus."""

    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass(frozen=True)
class TensorSpec:
    """Name, NumPy dtype and shape (``None`` = any size) of one signature input or output."""

    key: str
    tensor_name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None  # None: unknown rank

    def describe(self) -> str:
        """Human form used in error messages, e.g. ``float32[?,28,28,1]``."""
        if self.shape is None:
            return f"{self.dtype.name}[...]"
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.name}[{dims}]"


@dataclass(frozen=True)
class Signature:
    """One signature: its name, method and input/output specs (keys sorted)."""

    name: str
    method_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


def _spec_from_tensor_info(key: str, info: Any) -> TensorSpec:
    dtype = dtypes.as_dtype(info.dtype)
    np_dtype = np.dtype(object) if dtype.name == "string" else np.dtype(dtype.as_numpy_dtype)
    if info.tensor_shape.unknown_rank:
        shape = None
    else:
        shape = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
    return TensorSpec(key=key, tensor_name=info.name, dtype=np_dtype, shape=shape)


def read_signature_defs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the ``SignatureDef`` protos of a SavedModel's serving meta graph (no graph loading)."""
    pb = Path(path) / "saved_model.pb"
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(pb.read_bytes())
    except OSError as exc:
        raise LoadError(f"cannot read {pb}: {exc.strerror or exc}") from exc
    except Exception as exc:  # protobuf raises DecodeError (not an OSError) on corrupt data
        raise LoadError(f"{pb} is not a SavedModel: {exc}") from exc
    for meta_graph in saved.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags or len(saved.meta_graphs) == 1:
            return dict(meta_graph.signature_def)
    raise LoadError(f"{pb} has no meta graph tagged 'serve'")


class LoadedModel:
    """One loaded SavedModel version with its signatures.

    ``signature_defs`` holds the raw ``SignatureDef`` protos (what TF Serving's metadata API
    returns); ``signatures`` the parsed specs used to validate requests.
    """

    def __init__(
        self,
        path: Path,
        version: int,
        session: tf.compat.v1.Session,
        signature_defs: dict[str, Any],
    ):
        self.path = path
        self.version = version
        #: What runs ``serving_default``: "tensorflow" (the Session) or "tflite" (`use_tflite`).
        self.runtime = "tensorflow"
        self._lite: list[LiteSignature] = []
        self._session = session
        self.signature_defs = signature_defs
        self.signatures: dict[str, Signature] = {}
        self._callables: dict[str, Callable[..., list[np.ndarray]]] = {}
        for name, sig_def in signature_defs.items():
            if name in _INTERNAL_SIGNATURES:
                continue  # e.g. __saved_model_init_op: listed in metadata, not callable
            sig = Signature(
                name=name,
                method_name=sig_def.method_name,
                inputs={k: _spec_from_tensor_info(k, v) for k, v in sorted(sig_def.inputs.items())},
                outputs={
                    k: _spec_from_tensor_info(k, v) for k, v in sorted(sig_def.outputs.items())
                },
            )
            self.signatures[name] = sig
            # One compiled feed/fetch step per signature, inputs and outputs in key order.
            self._callables[name] = session.make_callable(
                [spec.tensor_name for spec in sig.outputs.values()],
                feed_list=[spec.tensor_name for spec in sig.inputs.values()],
            )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        version: int | None = None,
        *,
        prefer_tflite: bool = False,
    ) -> LoadedModel:
        """Load the SavedModel at ``path`` (a version folder); version defaults to its name.

        The serving meta graph is loaded into a TensorFlow Session of its own, as TF Serving
        does: a signature call is then one ``Session`` run, without the Python work of an eager
        function call (about 0.3-0.6 ms less per call on a small CPU; see docs/BENCHMARKS.md).
        The session's thread pools follow ``tf.config.threading``. With ``prefer_tflite``
        and a ``model.tflite`` in the folder, ``serving_default`` runs on it (`use_tflite`).
        """
        p = Path(path)
        if version is None:
            if not p.name.isdigit():
                raise LoadError(f"cannot infer the version from folder name {p.name!r}")
            version = int(p.name)
        signature_defs = read_signature_defs(p)
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=tf.config.threading.get_intra_op_parallelism_threads(),
            inter_op_parallelism_threads=tf.config.threading.get_inter_op_parallelism_threads(),
        )
        session = tf.compat.v1.Session(graph=tf.Graph(), config=config)
        try:
            with session.graph.as_default():
                tf.compat.v1.saved_model.loader.load(session, [SERVE_TAG], str(p))
        # TensorFlow raises IndexError ("Read less bytes than requested") on a truncated shard
        except (OSError, ValueError, IndexError, RuntimeError, tf.errors.OpError) as exc:
            session.close()
            raise LoadError(f"cannot load SavedModel {p}: {exc}") from exc
        model = cls(p, version, session, signature_defs)
        lite_file = p / TFLITE_FILE
        if prefer_tflite and lite_file.is_file():
            try:
                model.use_tflite(lite_file.read_bytes())
            except OSError as exc:
                model.close()
                raise LoadError(f"cannot read {lite_file}: {exc}") from exc
            except BaseException:
                model.close()
                raise
        elif prefer_tflite:
            log.info("version %d: no %s in %s; serving the SavedModel", version, TFLITE_FILE, p)
        return model

    def use_tflite(self, blob: bytes, signature_name: str = SIGNATURE_NAME) -> None:
        """Run ``signature_name`` on the TFLite flatbuffer ``blob`` from now on.

        The flatbuffer must have the signature's inputs and outputs and give the Session's
        answers (floats within 1e-4, everything else equal) on a probe batch; otherwise
        `LoadError`, and the Session keeps the signature.
        """
        sig = self.signatures.get(signature_name)
        probe = _probe_inputs(sig) if sig is not None else None
        if sig is None or probe is None:
            log.warning(
                "version %d: %s not used: signature %r %s; serving the SavedModel",
                self.version,
                TFLITE_FILE,
                signature_name,
                "is not in the SavedModel" if sig is None else "has inputs a probe cannot fill",
            )
            return
        try:
            lite = LiteSignature(blob, signature_name, list(sig.inputs), list(sig.outputs))
            expected = self._callables[signature_name](*probe)
            got = lite(*probe)
        except (ValueError, RuntimeError, tf.errors.OpError) as exc:
            raise LoadError(f"{TFLITE_FILE} of {self.path}: {exc}") from exc
        for key, want, have in zip(sig.outputs, expected, got, strict=True):
            want, have = np.asarray(want), np.asarray(have)
            same = (
                want.dtype == have.dtype
                and want.shape == have.shape
                and (
                    np.allclose(want, have, rtol=1e-4, atol=1e-4)
                    if want.dtype.kind == "f"
                    else np.array_equal(want, have)
                )
            )
            if not same:
                raise LoadError(
                    f"{TFLITE_FILE} of {self.path} does not match its SavedModel: output "
                    f"{key!r} of {signature_name!r} differs on a probe batch (a stale file?)"
                )
        self._callables[signature_name] = lite
        self._lite.append(lite)
        self.runtime = "tflite"
        log.info(
            "version %d: %s runs on TensorFlow Lite (%s)", self.version, signature_name, TFLITE_FILE
        )

    def close(self) -> None:
        """Release the session (its graph and variables) and any TFLite interpreters;
        `predict` fails afterwards."""
        for lite in self._lite:
            lite.close()
        self._session.close()

    def signature(self, name: str = SIGNATURE_NAME) -> Signature:
        """Return a signature by name, or raise `InvalidInput` (as TF Serving does)."""
        name = name or SIGNATURE_NAME
        try:
            return self.signatures[name]
        except KeyError:
            raise InvalidInput(
                f'Serving signature name: "{name}" not found in signature def'
            ) from None

    def check_inputs(
        self, inputs: Mapping[str, Any], signature_name: str = SIGNATURE_NAME
    ) -> dict[str, np.ndarray]:
        """Validate and convert ``inputs`` to the signature's dtypes; raise `InvalidInput`."""
        sig = self.signature(signature_name)
        missing = sorted(set(sig.inputs) - set(inputs))
        extra = sorted(set(inputs) - set(sig.inputs))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing inputs: {', '.join(missing)}")
            if extra:
                parts.append(f"unexpected inputs: {', '.join(extra)}")
            raise InvalidInput(
                f"Request inputs do not match signature '{sig.name}' "
                f"(expects {', '.join(sig.inputs)}); " + "; ".join(parts)
            )
        out: dict[str, np.ndarray] = {}
        for key, spec in sig.inputs.items():
            out[key] = _conform(key, inputs[key], spec)
        return out

    def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str = SIGNATURE_NAME
    ) -> dict[str, np.ndarray]:
        """Run a signature on NumPy inputs and return its outputs as NumPy arrays.

        String outputs come back as object arrays of ``bytes``, as ``Tensor.numpy()`` gives them.
        """
        name = signature_name or SIGNATURE_NAME
        arrays = list(self.check_inputs(inputs, name).values())
        empty = bool(arrays) and all(
            x.ndim and len(x) == 0 and x.dtype.kind in "biuf" for x in arrays
        )
        if empty:
            # A 0-row batch: TensorFlow's own kernels answer 0-row outputs, but oneDNN's (its
            # default on CPUs with AVX-512 VNNI or AMX) refuse one in the convolutions. Run one
            # row of zeros and keep none of its outputs.
            arrays = [np.zeros((1, *x.shape[1:]), x.dtype) for x in arrays]
        try:
            values = self._callables[name](*arrays)
        except tf.errors.InvalidArgumentError as exc:
            raise InvalidInput(exc.message) from exc
        if empty:
            values = [v[:0] if np.ndim(v) else v for v in values]
        return dict(zip(self.signatures[name].outputs, values, strict=True))

    def warmup_records(self) -> Iterator[Any]:
        """Yield the ``PredictionLog`` records of ``assets.extra/tf_serving_warmup_requests``."""
        path = self.path / WARMUP_FILE
        if not path.is_file():
            return
        for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            record = prediction_log_pb2.PredictionLog()
            record.ParseFromString(raw)
            yield record

    def run_warmup(self) -> int:
        """Replay the warmup records (predict logs only) and return how many were run.

        Raises `LoadError` on a record that is not a predict log or does not run, as TF Serving
        refuses to serve a version whose warmup fails.
        """
        count = 0
        for record in self.warmup_records():
            kind = record.WhichOneof("log_type")
            if kind != "predict_log":
                raise LoadError(f"unsupported warmup record type {kind!r} in {WARMUP_FILE}")
            request = record.predict_log.request
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            try:
                self.predict(inputs, request.model_spec.signature_name or SIGNATURE_NAME)
            except InvalidInput as exc:
                raise LoadError(f"warmup record {count} failed: {exc}") from exc
            count += 1
        return count


def _probe_inputs(sig: Signature) -> list[np.ndarray] | None:
    """Fixed pseudo-random inputs for ``sig``, 3 rows where a dimension is free; None when an
    input is not numeric or has an unknown rank."""
    rng = np.random.default_rng(0)
    out = []
    for spec in sig.inputs.values():
        if spec.shape is None or spec.dtype.kind not in "fiu":
            return None
        shape = [3 if d is None or d < 0 else d for d in spec.shape]
        values = rng.random(shape) if spec.dtype.kind == "f" else rng.integers(0, 2, shape)
        out.append(values.astype(spec.dtype))
    return out


def _conform(key: str, value: Any, spec: TensorSpec) -> np.ndarray:
    """Convert one input to the spec's dtype and check its shape."""
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if spec.dtype == np.dtype(object):
        if arr.dtype.kind not in ("O", "S", "U"):
            raise InvalidInput(f"input '{key}' expects strings, got {arr.dtype.name}")
    elif arr.dtype != spec.dtype:
        if arr.dtype.kind in ("O", "S", "U") or (spec.dtype.kind in "iu" and arr.dtype.kind == "f"):
            raise InvalidInput(
                f"input '{key}' expects {spec.dtype.name}, got {arr.dtype.name} values"
            )
        arr = arr.astype(spec.dtype)
    if spec.shape is not None:
        ok = arr.ndim == len(spec.shape) and all(
            want is None or want == got for want, got in zip(spec.shape, arr.shape, strict=False)
        )
        if not ok:
            got = "[" + ",".join(str(d) for d in arr.shape) + "]"
            raise InvalidInput(f"input '{key}' expects shape {spec.describe()}, got {got}")
    return arr


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions to serve, like TF Serving's ``model_version_policy``.

    ``kind`` is ``latest`` (the ``num_versions`` highest), ``all`` or ``specific``.
    """

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def latest(cls, num_versions: int = 1) -> VersionPolicy:
        """Serve the ``num_versions`` highest versions."""
        if num_versions < 1:
            raise ValueError("latest policy needs num_versions >= 1")
        return cls("latest", num_versions=num_versions)

    @classmethod
    def all(cls) -> VersionPolicy:
        """Serve every version found."""
        return cls("all")

    @classmethod
    def specific(cls, versions: list[int] | tuple[int, ...]) -> VersionPolicy:
        """Serve exactly these versions (when present)."""
        if not versions:
            raise ValueError("specific policy needs at least one version")
        return cls("specific", versions=tuple(sorted(set(int(v) for v in versions))))

    def select(self, available: list[int]) -> list[int]:
        """Return the versions this policy serves out of ``available``."""
        if self.kind == "all":
            return sorted(available)
        if self.kind == "specific":
            return sorted(set(available) & set(self.versions))
        return sorted(available)[-self.num_versions :]


Fingerprint = tuple[tuple[str, int, int], ...]


def folder_fingerprint(path: str | os.PathLike[str]) -> Fingerprint | None:
    """Every file under ``path`` as (relative path, size, mtime in ns), sorted; None if the
    folder vanished while it was read. Two equal fingerprints mean nothing was written between."""
    root = Path(path)
    entries = []
    try:
        for dirpath, _dirs, files in os.walk(root, onerror=_raise):
            for name in files:
                st = os.stat(os.path.join(dirpath, name))
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                entries.append((rel, st.st_size, st.st_mtime_ns))
    except FileNotFoundError:
        return None
    return tuple(sorted(entries))


def _raise(exc: OSError) -> None:
    raise exc


@dataclass
class _Servable:
    version: int
    state: State = State.START
    error: str = ""
    fingerprint: Fingerprint | None = None  # of the folder when its load began
    model: LoadedModel | None = None
    in_flight: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)


Loader = Callable[[Path, int], LoadedModel]


def make_loader(*, prefer_tflite: bool = False, warmup: bool = True) -> Loader:
    """A `ModelManager` loader: `LoadedModel.load` (``prefer_tflite`` passed on), then, with
    ``warmup``, the version's warmup records (a version whose warmup fails is closed)."""

    def load(path: Path, version: int) -> LoadedModel:
        model = LoadedModel.load(path, version, prefer_tflite=prefer_tflite)
        if not warmup:
            return model
        try:
            n = model.run_warmup()
        except BaseException:
            model.close()
            raise
        log.info("model at %s: version %d ran %d warmup record(s)", path.parent, version, n)
        return model

    return load


_default_loader = make_loader()


class ModelManager:
    """Serves the versions of one model that a `VersionPolicy` selects from a base path.

    `poll()` (called every ``poll_interval_s`` by the thread `start()` runs) loads versions
    that appeared and unloads the ones that disappeared or fell out of the policy. Requests
    take a version with `acquire()` (a context manager): a version being unloaded waits for
    those requests (up to ``drain_timeout_s``) before it is dropped.

    A version folder is loaded only once it has settled: its `folder_fingerprint` (every
    file's name, size and mtime) was the same at two polls at least ``settle_s`` apart
    (default: the poll interval, at most 1 s; 0 loads at first sight; the poller wakes up
    when a folder is due). A folder still being copied in is
    therefore not loaded half-written. A version that fails to load is reported (state END
    with the error) and retried only when its folder changes (rewritten, or a copy resumed)
    or after it disappeared and came back; it is never served.
    """

    def __init__(
        self,
        name: str,
        base_path: str | os.PathLike[str],
        policy: VersionPolicy | None = None,
        *,
        poll_interval_s: float = 1.0,
        labels: Mapping[str, int] | None = None,
        loader: Loader | None = None,
        drain_timeout_s: float = 30.0,
        on_change: Callable[[ModelManager], None] | None = None,
        settle_s: float | None = None,
    ):
        self.name = name
        self.base_path = Path(base_path)
        self.policy = policy or VersionPolicy.latest()
        self.poll_interval_s = poll_interval_s
        self.labels: dict[str, int] = dict(labels or {})
        self._loader = loader or _default_loader
        self._drain_timeout_s = drain_timeout_s
        self._on_change = on_change
        self.settle_s = min(poll_interval_s, 1.0) if settle_s is None else settle_s
        # version -> (fingerprint, when it was first seen) of folders not yet settled
        self._settling: dict[int, tuple[Fingerprint | None, float]] = {}
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()
        self._servables: dict[int, _Servable] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start polling the base path in a daemon thread (first poll happens immediately)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"poll-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except OSError as exc:  # e.g. base path on a flaky mount: try again next round
                log.warning("model %s: polling %s failed: %s", self.name, self.base_path, exc)
            except Exception:  # keep polling whatever happened; the log has the details
                log.exception("model %s: polling %s failed", self.name, self.base_path)
            self._stop.wait(self._next_wait())

    def _next_wait(self) -> float:
        """Seconds to the next poll: the poll interval, or sooner when a folder settles."""
        with self._lock:
            first_seen = [seen for _fp, seen in self._settling.values()]
        if not first_seen:
            return self.poll_interval_s
        due = min(first_seen) + self.settle_s - time.monotonic()
        return min(self.poll_interval_s, max(due, 0.01))

    def close(self) -> None:
        """Stop polling and unload every version."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.poll_interval_s * 2))
            self._thread = None
        with self._poll_lock:
            for version in list(self._loaded_versions()):
                self._unload(version)

    def update(
        self, policy: VersionPolicy | None = None, labels: Mapping[str, int] | None = None
    ) -> None:
        """Change the version policy and/or labels (a config reload); applies at the next poll."""
        with self._lock:
            if policy is not None:
                self.policy = policy
            if labels is not None:
                self.labels = dict(labels)

    # -- polling ----------------------------------------------------------------------------
    def _loaded_versions(self) -> list[int]:
        with self._lock:
            return sorted(
                v for v, s in self._servables.items() if s.state in (State.LOADING, State.AVAILABLE)
            )

    def poll(self) -> bool:
        """Load newly selected versions, then unload unselected ones; True if anything changed."""
        with self._poll_lock:
            wanted = self.policy.select(list_versions(self.base_path))
            changed = False
            for version in wanted:
                with self._lock:
                    servable = self._servables.get(version)
                    if servable is not None and servable.state in (State.LOADING, State.AVAILABLE):
                        continue
                fingerprint = folder_fingerprint(self.base_path / str(version))
                # A failed version is retried only once its folder changed.
                if servable is not None and servable.error and fingerprint == servable.fingerprint:
                    continue
                if not self._settled(version, fingerprint):
                    continue
                self._load(version, fingerprint)
                changed = True
            with self._lock:
                for version in list(self._settling):
                    if version not in wanted:
                        del self._settling[version]
            # TF Serving's AvailabilityPreservingPolicy: a version that is no longer wanted is
            # unloaded only once a wanted version is AVAILABLE (or nothing is wanted at all),
            # so a new version that fails to load never takes the model offline. Until then
            # the newest unwanted version keeps serving.
            with self._lock:
                any_available = any(
                    self._servables[v].state == State.AVAILABLE
                    for v in wanted
                    if v in self._servables
                )
            unwanted = [v for v in self._loaded_versions() if v not in wanted]
            if wanted and not any_available:
                unwanted = unwanted[:-1]  # keep the newest one serving
            for version in unwanted:
                self._unload(version)
                changed = True
            unloaded = bool(unwanted)
            with self._lock:
                for version, servable in list(self._servables.items()):
                    # forget failed versions whose folder is gone, so a re-export is retried
                    if servable.error and version not in wanted:
                        del self._servables[version]
        if changed and self._on_change is not None:
            self._on_change(self)  # e.g. drops the model server's batcher of an unloaded version
        if unloaded:
            # A loaded SavedModel's Python objects (graph, functions) sit in reference cycles
            # that the cyclic collector seldom reaches on its own: without this, every version
            # swap left ~4 MiB behind (measured with eager loading; sessions are also closed).
            gc.collect()
        return changed

    def poll_until_settled(self, max_rounds: int = 3) -> None:
        """`poll`, then again one settle time later while a folder is still settling (at most
        ``max_rounds`` polls): what is there at start-up is loaded before this returns."""
        self.poll()
        for _ in range(max_rounds - 1):
            if not self.settling_versions():
                return
            time.sleep(self.settle_s)
            self.poll()

    def _settled(self, version: int, fingerprint: Fingerprint | None) -> bool:
        """True once ``fingerprint`` has not changed for ``settle_s`` (see the class doc)."""
        if self.settle_s <= 0:
            return fingerprint is not None
        now = time.monotonic()
        with self._lock:
            seen = self._settling.get(version)
            if fingerprint is None or seen is None or seen[0] != fingerprint:
                if seen is not None:
                    log.info("model %s: version %d is still being written", self.name, version)
                self._settling[version] = (fingerprint, now)
                return False
            if now - seen[1] < self.settle_s:
                return False
            del self._settling[version]
            return True

    def _load(self, version: int, fingerprint: Fingerprint | None = None) -> None:
        servable = _Servable(version, State.LOADING, fingerprint=fingerprint)
        with self._lock:
            self._servables[version] = servable
        path = self.base_path / str(version)
        log.info("model %s: loading version %d from %s", self.name, version, path)
        started = time.perf_counter()
        try:
            model = self._loader(path, version)
        except ModelError as exc:
            log.error("model %s: version %d failed to load: %s", self.name, version, exc)
            with self._lock:
                servable.state, servable.error = State.END, str(exc)
            return
        except Exception as exc:  # TensorFlow can raise anything on a damaged SavedModel
            log.exception("model %s: version %d failed to load", self.name, version)
            with self._lock:
                servable.state, servable.error = State.END, f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            servable.model, servable.state = model, State.AVAILABLE
        log.info(
            "model %s: version %d AVAILABLE (%.2fs)",
            self.name,
            version,
            time.perf_counter() - started,
        )

    def _unload(self, version: int) -> None:
        with self._lock:
            servable = self._servables.get(version)
            if servable is None or servable.state == State.END:
                return
            servable.state = State.UNLOADING
        log.info("model %s: unloading version %d", self.name, version)
        with servable.cond:
            drained = servable.cond.wait_for(
                lambda: servable.in_flight == 0, timeout=self._drain_timeout_s
            )
        if not drained:
            log.warning(
                "model %s: version %d still has %d request(s) after %.0fs; dropping it anyway",
                self.name,
                version,
                servable.in_flight,
                self._drain_timeout_s,
            )
        with self._lock:
            model, servable.model, servable.state = servable.model, None, State.END
        if drained and model is not None:
            model.close()  # nothing runs on it any more; a straggler keeps it alive otherwise

    # -- requests ---------------------------------------------------------------------------
    def resolve(self, version: int | None = None, label: str | None = None) -> int:
        """Return the AVAILABLE version a request names (latest when neither is given)."""
        with self._lock:
            if label:
                if label not in self.labels:
                    raise UnknownLabel(f"Unrecognized servable version label: {label}")
                version = self.labels[label]
            available = [v for v, s in self._servables.items() if s.state == State.AVAILABLE]
            if version is None:
                if not available:
                    raise ServableNotFound(f"Servable not found for request: Latest({self.name})")
                return max(available)
            if version not in available:
                raise ServableNotFound(
                    f"Servable not found for request: Specific({self.name}, {version})"
                )
            return version

    @contextlib.contextmanager
    def acquire(
        self, version: int | None = None, label: str | None = None
    ) -> Iterator[LoadedModel]:
        """Hold a loaded version for the duration of a request (it will not be unloaded)."""
        with self._lock:
            resolved = self.resolve(version, label)
            servable = self._servables[resolved]
            assert servable.model is not None
            model = servable.model
            with servable.cond:
                servable.in_flight += 1
        try:
            yield model
        finally:
            with servable.cond:
                servable.in_flight -= 1
                servable.cond.notify_all()

    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        version: int | None = None,
        label: str | None = None,
        signature_name: str = SIGNATURE_NAME,
    ) -> tuple[int, dict[str, np.ndarray]]:
        """Run a prediction on the requested (default: latest) version; return (version, outputs)."""
        with self.acquire(version, label) as model:
            return model.version, model.predict(inputs, signature_name)

    def status(self, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        """Per-version states, like GetModelStatus; a named version/label must exist."""
        with self._lock:
            if label:
                if label not in self.labels:
                    raise UnknownLabel(f"Unrecognized servable version label: {label}")
                version = self.labels[label]
            if version is not None:
                servable = self._servables.get(version)
                if servable is None:
                    raise ServableNotFound(f"Could not find version {version} of model {self.name}")
                return [VersionStatus(version, servable.state.value, servable.error)]
            return [
                VersionStatus(v, s.state.value, s.error)
                for v, s in sorted(self._servables.items(), reverse=True)
            ]

    def settling_versions(self) -> list[int]:
        """Versions whose folder was seen but is not loaded yet (still settling), ascending."""
        with self._lock:
            return sorted(self._settling)

    def available_versions(self) -> list[int]:
        """Versions currently AVAILABLE, ascending."""
        with self._lock:
            return sorted(v for v, s in self._servables.items() if s.state == State.AVAILABLE)

    def wait_until_available(self, timeout_s: float = 60.0, version: int | None = None) -> bool:
        """Block until some (or the given) version is AVAILABLE; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            avail = self.available_versions()
            if (version is None and avail) or (version is not None and version in avail):
                return True
            time.sleep(0.05)
        return False
