"""TF Serving's text-format config files: ``models.config``, ``monitoring.config``, ``batching.config``.

``models.config`` is parsed with the ``ModelServerConfig`` proto that ``tensorflow-serving-api``
ships (``tensorflow_serving.config.model_server_config_pb2``). The package does not ship the
``MonitoringConfig`` and ``BatchingParameters`` protos, so they are rebuilt here from TF Serving's
``.proto`` definitions (same package, field names, numbers and types, including the
``google.protobuf`` wrapper types) and parsed with the same ``google.protobuf.text_format``:
a file TF Serving accepts is accepted here, and a typo is rejected with the parser's
line:column message.

Example::

    from serving.modelserver.config import load_model_server_config, load_batching_parameters
    config = load_model_server_config("serving/config/models.config",
                                      base_path_override="/abs/models/fashion_mnist")
    params = load_batching_parameters("serving/config/batching.config")
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,  # noqa: F401 - registers wrappers.proto in the pool
)
from tensorflow_serving.config import model_server_config_pb2

from serving.savedmodel import VersionPolicy


class ConfigFileError(ValueError):
    """A config file is missing, unreadable or not valid text-format protobuf."""


def _build_messages() -> dict[str, Any]:
    """MonitoringConfig / PrometheusConfig / BatchingParameters message classes."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="convserve/tensorflow_serving_config_subset.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    f = descriptor_pb2.FieldDescriptorProto
    opt, rep = f.LABEL_OPTIONAL, f.LABEL_REPEATED

    prom = fdp.message_type.add(name="PrometheusConfig")
    prom.field.add(name="enable", number=1, type=f.TYPE_BOOL, label=opt)
    prom.field.add(name="path", number=2, type=f.TYPE_STRING, label=opt)

    mon = fdp.message_type.add(name="MonitoringConfig")
    mon.field.add(
        name="prometheus_config",
        number=1,
        type=f.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
        label=opt,
    )

    bp = fdp.message_type.add(name="BatchingParameters")
    for name, number, wrapper in (
        ("max_batch_size", 1, "Int64Value"),
        ("batch_timeout_micros", 2, "Int64Value"),
        ("max_enqueued_batches", 3, "Int64Value"),
        ("num_batch_threads", 4, "Int64Value"),
        ("thread_pool_name", 5, "StringValue"),
    ):
        bp.field.add(
            name=name,
            number=number,
            type=f.TYPE_MESSAGE,
            type_name=f".google.protobuf.{wrapper}",
            label=opt,
        )
    bp.field.add(name="allowed_batch_sizes", number=6, type=f.TYPE_INT64, label=rep)
    bp.field.add(name="pad_variable_length_inputs", number=7, type=f.TYPE_BOOL, label=opt)

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(
        descriptor_pool.Default().FindFileByName("google/protobuf/wrappers.proto").serialized_pb
    )
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"tensorflow.serving.{name}")
        )
        for name in ("PrometheusConfig", "MonitoringConfig", "BatchingParameters")
    }


_MESSAGES = _build_messages()
MonitoringConfig = _MESSAGES["MonitoringConfig"]
BatchingParametersProto = _MESSAGES["BatchingParameters"]


def _read(path: str | os.PathLike[str], what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _parse(text: str, message: Any, path: str | os.PathLike[str]) -> Any:
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        where = f"{path}:{line}:{column}" if line is not None else str(path)
        detail = re.sub(r"^\d+:\d+ : ", "", str(exc))
        raise ConfigFileError(f"{where}: {detail}") from exc
    return message


def load_model_server_config(
    path: str | os.PathLike[str], base_path_override: str | None = None
) -> Any:
    """Parse a ``models.config`` (``ModelServerConfig``) and check it.

    ``base_path_override`` replaces the base path of the only model (for running the same
    file outside a container); it is an error when the file lists several models.
    """
    config = _parse(
        _read(path, "model config file"), model_server_config_pb2.ModelServerConfig(), path
    )
    validate_model_server_config(config, path)
    if base_path_override:
        models = config.model_config_list.config
        if len(models) != 1:
            raise ConfigFileError(
                f"{path}: --model_base_path can only override a config with exactly one "
                f"model, this one has {len(models)}"
            )
        models[0].base_path = str(base_path_override)
    return config


def validate_model_server_config(config: Any, path: str | os.PathLike[str] = "config") -> None:
    """Reject what TF Serving would reject (or we cannot serve): raise `ConfigFileError`."""
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigFileError(f"{path}: only model_config_list is supported")
    names = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise ConfigFileError(f"{path}: a model config has no name")
        if model.name in names:
            raise ConfigFileError(f"{path}: model {model.name!r} is listed twice")
        names.add(model.name)
        if not model.base_path:
            raise ConfigFileError(f"{path}: model {model.name!r} has no base_path")
        if model.model_platform not in ("", "tensorflow"):
            raise ConfigFileError(
                f"{path}: model {model.name!r} uses platform {model.model_platform!r}; "
                "only 'tensorflow' is served"
            )
        policy_of(model)  # validates the policy
        for label, version in model.version_labels.items():
            if version < 0:
                raise ConfigFileError(f"{path}: label {label!r} has a negative version")


def policy_of(model_config: Any) -> VersionPolicy:
    """The `VersionPolicy` of one ``ModelConfig`` (TF Serving's default: latest 1)."""
    policy = model_config.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return VersionPolicy.all()
    if kind == "specific":
        if not policy.specific.versions:
            raise ConfigFileError(f"model {model_config.name!r}: specific policy lists no versions")
        return VersionPolicy.specific(list(policy.specific.versions))
    if kind == "latest" and policy.latest.num_versions:
        return VersionPolicy.latest(policy.latest.num_versions)
    return VersionPolicy.latest(1)


def single_model_config(name: str, base_path: str) -> Any:
    """The ``ModelServerConfig`` TF Serving builds from ``--model_name``/``--model_base_path``."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = name, base_path, "tensorflow"
    return config


@dataclass(frozen=True)
class MonitoringSettings:
    """Whether Prometheus metrics are served, and on which path of the REST port."""

    enabled: bool = False
    path: str = "/monitoring/prometheus/metrics"


def load_monitoring_config(path: str | os.PathLike[str]) -> MonitoringSettings:
    """Parse a ``monitoring.config`` (``MonitoringConfig``)."""
    msg = _parse(_read(path, "monitoring config file"), MonitoringConfig(), path)
    prom = msg.prometheus_config
    metrics_path = prom.path or MonitoringSettings.path
    if not metrics_path.startswith("/"):
        raise ConfigFileError(f"{path}: prometheus_config.path must start with '/'")
    return MonitoringSettings(enabled=prom.enable, path=metrics_path)


@dataclass(frozen=True)
class BatchingSettings:
    """Batching parameters with TF Serving's defaults for the ones a file leaves out."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1

    @property
    def batch_timeout_s(self) -> float:
        """``batch_timeout_micros`` in seconds."""
        return self.batch_timeout_micros / 1e6


def load_batching_parameters(path: str | os.PathLike[str] | None) -> BatchingSettings:
    """Parse a ``batching.config`` (``BatchingParameters``); ``None`` gives the defaults."""
    if path is None:
        return BatchingSettings()
    msg = _parse(_read(path, "batching parameters file"), BatchingParametersProto(), path)
    defaults = BatchingSettings()
    values = {}
    for name in (
        "max_batch_size",
        "batch_timeout_micros",
        "max_enqueued_batches",
        "num_batch_threads",
    ):
        value = getattr(msg, name).value if msg.HasField(name) else getattr(defaults, name)
        minimum = 0 if name == "batch_timeout_micros" else 1
        if value < minimum:
            raise ConfigFileError(f"{path}: {name} must be >= {minimum}, got {value}")
        values[name] = int(value)
    if msg.allowed_batch_sizes and msg.allowed_batch_sizes[-1] != values["max_batch_size"]:
        raise ConfigFileError(
            f"{path}: the last allowed_batch_sizes entry must equal max_batch_size"
        )
    return BatchingSettings(**values)
