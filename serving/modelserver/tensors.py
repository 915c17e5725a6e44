"""Tensor conversions for the model server: TensorProto <-> NumPy, TF Serving JSON <-> NumPy.

The gRPC path avoids ``tf.make_ndarray``/``tf.make_tensor_proto``: ``tensor_content`` is read
with ``np.frombuffer`` (no copy) and outputs are written as ``tensor_content`` (one
``tobytes``), which is what TF Serving itself sends back. Typed value fields (``float_val``,
``int64_val``, ...) are accepted as well, including TensorFlow's "one value fills the shape"
shorthand.

The JSON side follows TF Serving's REST API: ``instances`` (row format) or ``inputs``
(columnar), ``{"b64": ...}`` for binary strings, ``predictions``/``outputs`` in the answer,
float32 values written in their shortest round-trip form (``0.1``, not ``0.10000000149``).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.savedmodel import InvalidInput, Signature, TensorSpec

# DataType enum -> (NumPy dtype, TensorProto typed-value field)
_DTYPES: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val"),
    types_pb2.DT_UINT8: (np.dtype(np.uint8), "int_val"),
    types_pb2.DT_INT16: (np.dtype(np.int16), "int_val"),
    types_pb2.DT_INT8: (np.dtype(np.int8), "int_val"),
    types_pb2.DT_UINT16: (np.dtype(np.uint16), "int_val"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
    types_pb2.DT_HALF: (np.dtype(np.float16), "half_val"),
    types_pb2.DT_UINT32: (np.dtype(np.uint32), "uint32_val"),
    types_pb2.DT_UINT64: (np.dtype(np.uint64), "uint64_val"),
    types_pb2.DT_STRING: (np.dtype(object), "string_val"),
}
# The "one value fills the shape" shorthand allocates the whole tensor from a few bytes of
# request: cap it at what a whole gRPC message may carry (grpc_service.MAX_MESSAGE_BYTES).
MAX_FILLED_BYTES = 64 * 1024 * 1024

_NP_TO_DT = {np_dtype: dt for dt, (np_dtype, _) in _DTYPES.items() if np_dtype.kind != "O"}


def dtype_name(dt: int) -> str:
    """``DT_FLOAT`` -> ``float``, as TF Serving words its messages."""
    return types_pb2.DataType.Name(dt)[3:].lower() if dt in types_pb2.DataType.values() else str(dt)


def tensor_proto_to_ndarray(proto: Any, key: str = "input") -> np.ndarray:
    """Convert a ``TensorProto`` to a NumPy array; raise `InvalidInput` if it is malformed."""
    if proto.dtype not in _DTYPES:
        raise InvalidInput(f"input '{key}': unsupported dtype {dtype_name(proto.dtype)}")
    np_dtype, field = _DTYPES[proto.dtype]
    if proto.tensor_shape.unknown_rank:
        raise InvalidInput(f"input '{key}': tensor_shape has unknown rank")
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input '{key}': tensor_shape has a negative dimension")
    size = math.prod(shape)
    if proto.tensor_content:
        if np_dtype.kind == "O":
            raise InvalidInput(f"input '{key}': string tensors cannot use tensor_content")
        if len(proto.tensor_content) != size * np_dtype.itemsize:
            raise InvalidInput(
                f"input '{key}': tensor_content has {len(proto.tensor_content)} bytes, "
                f"shape {list(shape)} of {dtype_name(proto.dtype)} needs "
                f"{size * np_dtype.itemsize}"
            )
        return np.frombuffer(proto.tensor_content, dtype=np_dtype).reshape(shape)
    values = getattr(proto, field)
    n = len(values)
    if np_dtype.kind == "O":
        arr = np.empty(n, dtype=object)
        arr[:] = list(values)
    elif field == "half_val":
        arr = np.asarray(values, dtype=np.uint16).view(np.float16)
    else:
        arr = np.asarray(values, dtype=np_dtype)
    if n == size:
        try:
            return arr.reshape(shape)
        except ValueError as exc:  # e.g. [0, 2**62, 2**62]: no values, but no valid shape either
            raise InvalidInput(f"input '{key}': invalid shape {list(shape)}: {exc}") from None
    if (n == 1 and size > 1) or (n == 0 and size == 0):
        nbytes = size * np_dtype.itemsize
        if nbytes > MAX_FILLED_BYTES:
            raise InvalidInput(
                f"input '{key}': shape {list(shape)} of {dtype_name(proto.dtype)} filled from "
                f"one value would take {nbytes} bytes, more than the limit of "
                f"{MAX_FILLED_BYTES}"
            )
        try:
            return np.full(shape, arr[0] if n else 0, dtype=np_dtype)
        except (ValueError, MemoryError) as exc:
            raise InvalidInput(f"input '{key}': invalid shape {list(shape)}: {exc}") from None
    raise InvalidInput(
        f"input '{key}': {n} values in {field} do not fill shape {list(shape)} ({size} values)"
    )


def ndarray_to_tensor_proto(arr: np.ndarray) -> Any:
    """Convert a NumPy array to a ``TensorProto`` (numbers in ``tensor_content``)."""
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in arr.shape]
    )
    if arr.dtype.kind in ("O", "S", "U"):
        values = [v if isinstance(v, bytes) else str(v).encode() for v in arr.reshape(-1)]
        return tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=values
        )
    dt = _NP_TO_DT.get(arr.dtype)
    if dt is None:
        raise ValueError(f"cannot encode dtype {arr.dtype} in a TensorProto")
    return tensor_pb2.TensorProto(
        dtype=dt, tensor_shape=shape, tensor_content=np.ascontiguousarray(arr).tobytes()
    )


# --- JSON (REST) ---------------------------------------------------------------------------


def _json_error_value(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 200 else text[:200] + "..."


def _b64(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) == 1 and isinstance(obj.get("b64"), str)


def _decode_strings(value: Any, key: str) -> Any:
    if _b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise InvalidInput("Unable to base64 decode") from None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return [_decode_strings(v, key) for v in value]
    raise InvalidInput(
        f"JSON Value: {_json_error_value(value)} Type: {type(value).__name__} is not of "
        f"expected type: string"
    )


_TF_TYPE_NAMES = {"float32": "float", "float64": "double", "float16": "half", "object": "string"}


def _find_bool(value: Any) -> bool | None:
    """The first JSON true/false in a nested list, or None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, list):
        for v in value:
            found = _find_bool(v)
            if found is not None:
                return found
    return None


def json_value_to_ndarray(value: Any, spec: TensorSpec, may_hold_bools: bool = True) -> np.ndarray:
    """Convert a nested JSON list to an array of the spec's dtype, with TF Serving's checks.

    NumPy silently reads ``true`` as 1 next to numbers, so unless ``may_hold_bools`` is false
    (the body has no ``true``/``false`` token) the values are searched for booleans first.
    """
    if spec.dtype.kind == "O":
        decoded = _decode_strings(value, spec.key)
        arr = np.empty(_shape_of(decoded), dtype=object)
        try:
            arr[...] = decoded
        except ValueError:
            raise InvalidInput(f"input '{spec.key}': nested lists are ragged") from None
        return arr
    if may_hold_bools and spec.dtype.kind != "b":
        found = _find_bool(value)
        if found is not None:
            tf_name = _TF_TYPE_NAMES.get(spec.dtype.name, spec.dtype.name)
            raise InvalidInput(
                f"JSON Value: {str(found).lower()} Type: {found} is not of expected type: {tf_name}"
            )
    try:
        arr = np.asarray(value)
    except ValueError:
        raise InvalidInput(
            f"input '{spec.key}': nested lists are ragged (lists at one level differ in size)"
        ) from None
    kind = arr.dtype.kind
    if kind == "O" or kind == "U" or kind == "S":
        raise InvalidInput(
            f"input '{spec.key}': JSON values must all be numbers of type "
            f"{spec.dtype.name} (got strings, objects or ragged lists)"
        )
    if kind == "b" and spec.dtype.kind != "b":
        raise InvalidInput(
            f"input '{spec.key}': booleans are not of expected type {spec.dtype.name}"
        )
    if spec.dtype.kind in "iu" and kind == "f":
        raise InvalidInput(
            f"input '{spec.key}': decimal values are not of expected type {spec.dtype.name}"
        )
    if spec.dtype.kind == "f" and kind in "iuf":
        with np.errstate(over="ignore"):
            out = arr.astype(spec.dtype)
        if np.isinf(out).any() and not np.isinf(arr).any():
            raise InvalidInput(
                f"Cannot convert JSON value to {spec.dtype.name} without loss of precision."
            )
        return out
    return arr.astype(spec.dtype)


def _shape_of(value: Any) -> tuple[int, ...]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def parse_predict_json(body: bytes, signature_for: Any) -> tuple[str, dict[str, np.ndarray], str]:
    """Parse a REST predict body; return (signature_name, inputs, "row" | "columnar").

    ``signature_for(name)`` returns the `Signature` for a (possibly empty) signature name.
    Raises `InvalidInput` with TF Serving's messages for malformed bodies.
    """
    if not body:
        raise InvalidInput("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"JSON Parse error: {exc}") from None
    except RecursionError:
        raise InvalidInput("JSON Parse error: nested too deeply") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"JSON Value: {_json_error_value(doc)} Is not object")
    signature_name = doc.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise InvalidInput(
            "JSON Value: signature_name not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    sig: Signature = signature_for(signature_name)
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise InvalidInput(
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"
        )
    bools = b"true" in body or b"false" in body
    if has_instances:
        return signature_name, _from_instances(doc["instances"], sig, bools), "row"
    if has_inputs:
        return signature_name, _from_inputs(doc["inputs"], sig, bools), "columnar"
    raise InvalidInput("Missing 'inputs' or 'instances' key")


def _from_instances(instances: Any, sig: Signature, bools: bool = True) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise InvalidInput("Excepting 'instances' to be an list/array")
    if not instances:
        raise InvalidInput("No values in 'instances' array")
    names = sorted(sig.inputs)
    objects = isinstance(instances[0], dict) and not _b64(instances[0])
    if not objects:
        if len(names) > 1:
            raise InvalidInput(
                "instances is a plain list, but expecting list of objects as multiple "
                "input tensors required as per tensorinfo_map"
            )
        return {names[0]: json_value_to_ndarray(instances, sig.inputs[names[0]], bools)}
    columns: dict[str, list[Any]] = {n: [] for n in names}
    for i, item in enumerate(instances):
        if not isinstance(item, dict) or _b64(item):
            raise InvalidInput(f"Expecting object but got list at item {i} of input list")
        if sorted(item) != names:
            raise InvalidInput(
                f"Failed to process element: {i} of 'instances' list. JSON object: "
                f"{_json_error_value(item)} keys must be equal to: {','.join(names)}"
            )
        for n in names:
            columns[n].append(item[n])
    return {n: json_value_to_ndarray(columns[n], sig.inputs[n], bools) for n in names}


def _from_inputs(inputs: Any, sig: Signature, bools: bool = True) -> dict[str, np.ndarray]:
    names = sorted(sig.inputs)
    if not isinstance(inputs, dict) or _b64(inputs):
        if len(names) > 1:
            raise InvalidInput(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        return {names[0]: json_value_to_ndarray(inputs, sig.inputs[names[0]], bools)}
    out = {}
    for n in names:
        if n not in inputs:
            raise InvalidInput(f"Missing named input: {n} in 'inputs' object.")
        out[n] = json_value_to_ndarray(inputs[n], sig.inputs[n], bools)
    return out


def _jsonable(name: str, arr: np.ndarray) -> Any:
    """An output array as JSON-ready nested lists (float32 in shortest round-trip form)."""
    if arr.dtype.kind in ("O", "S"):
        if name.endswith("_bytes"):
            flat = [{"b64": base64.b64encode(v).decode()} for v in arr.reshape(-1)]
        else:
            flat = [
                v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                for v in arr.reshape(-1)
            ]
        return np.array(flat, dtype=object).reshape(arr.shape).tolist() if arr.ndim else flat[0]
    if arr.dtype == np.float32 or arr.dtype == np.float16:
        # str() of a float32 is its shortest round-trip form; float() of that is the double
        # whose repr json writes, so 0.1f is written as 0.1 like TF Serving does.
        return np.vectorize(lambda s: float(s), otypes=[object])(arr.astype(str)).tolist()
    return arr.tolist()


def predict_response_json(outputs: Mapping[str, np.ndarray], fmt: str) -> dict[str, Any]:
    """The REST predict answer: ``{"predictions": ...}`` (row) or ``{"outputs": ...}``."""
    names = sorted(outputs)
    if fmt == "columnar":
        if len(names) == 1:
            return {"outputs": _jsonable(names[0], outputs[names[0]])}
        return {"outputs": {n: _jsonable(n, outputs[n]) for n in names}}
    if len(names) == 1:
        return {"predictions": _jsonable(names[0], outputs[names[0]])}
    batch = None
    for n in names:
        arr = outputs[n]
        if arr.ndim == 0:
            raise InvalidInput(f"Tensor name: {n} has no shape information ")
        if batch is None:
            batch = arr.shape[0]
        elif arr.shape[0] != batch:
            raise InvalidInput(
                f"Tensor name: {n} has inconsistent batch size: {arr.shape[0]} expecting: {batch}"
            )
    columns = {n: _jsonable(n, outputs[n]) for n in names}
    return {"predictions": [{n: columns[n][i] for n in names} for i in range(batch or 0)]}


def dumps(obj: Any) -> bytes:
    """Serialise a response (NaN/Infinity allowed, as in TF Serving's JSON)."""
    return json.dumps(obj, separators=(",", ":")).encode()
