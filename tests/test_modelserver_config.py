"""serving/config files and their parsers (no server, no TensorFlow runtime)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.modelserver.config import (
    BatchingSettings,
    ConfigFileError,
    MonitoringSettings,
    load_batching_parameters,
    load_model_server_config,
    load_monitoring_config,
    policy_of,
    single_model_config,
)
from serving.modelserver.server import parse_args
from serving.savedmodel import VersionPolicy

CONFIG = Path(__file__).resolve().parents[1] / "serving" / "config"


def test_shipped_models_config():
    config = load_model_server_config(CONFIG / "models.config")
    (model,) = config.model_config_list.config
    assert model.name == "fashion_mnist"
    assert model.base_path == "/models/fashion_mnist"
    assert model.model_platform == "tensorflow"
    assert policy_of(model) == VersionPolicy.latest(2)
    assert dict(model.version_labels) == {"stable": 1, "canary": 2}


def test_base_path_override_for_single_model_config():
    config = load_model_server_config(CONFIG / "models.config", base_path_override="/abs/m")
    assert config.model_config_list.config[0].base_path == "/abs/m"


def test_base_path_override_refused_for_several_models(tmp_path):
    path = tmp_path / "models.config"
    path.write_text(
        'model_config_list { config { name: "a" base_path: "/a" } '
        'config { name: "b" base_path: "/b" } }'
    )
    assert len(load_model_server_config(path).model_config_list.config) == 2
    with pytest.raises(ConfigFileError, match="exactly one model, this one has 2"):
        load_model_server_config(path, base_path_override="/x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('model_config_list { config { name: "a" base_pth: "/a" } }', 'no field named "base_pth"'),
        ('model_config_list { config { base_path: "/a" } }', "a model config has no name"),
        ('model_config_list { config { name: "a" } }', "model 'a' has no base_path"),
        (
            'model_config_list { config { name: "a" base_path: "/a" } '
            'config { name: "a" base_path: "/b" } }',
            "model 'a' is listed twice",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/a" model_platform: "onnx" } }',
            "only 'tensorflow' is served",
        ),
    ],
)
def test_bad_models_config_is_rejected(tmp_path, text, message):
    path = tmp_path / "models.config"
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=message):
        load_model_server_config(path)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigFileError, match="cannot read model config file"):
        load_model_server_config(tmp_path / "nope.config")


def test_version_policies(tmp_path):
    path = tmp_path / "models.config"
    path.write_text(
        "model_config_list { "
        'config { name: "a" base_path: "/a" model_version_policy { all {} } } '
        'config { name: "b" base_path: "/b" '
        "model_version_policy { specific { versions: 3 versions: 1 } } } "
        'config { name: "c" base_path: "/c" } }'
    )
    a, b, c = load_model_server_config(path).model_config_list.config
    assert policy_of(a) == VersionPolicy.all()
    assert policy_of(b) == VersionPolicy.specific([1, 3])
    assert policy_of(c) == VersionPolicy.latest(1)


def test_single_model_config_is_what_the_flags_mean():
    (model,) = single_model_config("fashion_mnist", "/m").model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (
        "fashion_mnist",
        "/m",
        "tensorflow",
    )


def test_shipped_monitoring_config():
    assert load_monitoring_config(CONFIG / "monitoring.config") == MonitoringSettings(
        enabled=True, path="/monitoring/prometheus/metrics"
    )


def test_monitoring_config_errors(tmp_path):
    path = tmp_path / "monitoring.config"
    path.write_text("prometheus_config { enable: yes }")
    with pytest.raises(ConfigFileError, match=r"monitoring.config:1:\d+: "):
        load_monitoring_config(path)
    path.write_text('prometheus_config { enable: true path: "metrics" }')
    with pytest.raises(ConfigFileError, match="must start with '/'"):
        load_monitoring_config(path)


def test_shipped_batching_config():
    assert load_batching_parameters(CONFIG / "batching.config") == BatchingSettings(
        max_batch_size=64, batch_timeout_micros=2000, max_enqueued_batches=32, num_batch_threads=2
    )
    assert load_batching_parameters(CONFIG / "batching.config").batch_timeout_s == 0.002


def test_batching_defaults_and_errors(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 8 }\n")
    params = load_batching_parameters(path)
    assert params.max_batch_size == 8
    assert params.batch_timeout_micros == 0 and params.max_enqueued_batches == 10
    path.write_text("max_batch_size { value: 0 }\n")
    with pytest.raises(ConfigFileError, match="max_batch_size must be >= 1, got 0"):
        load_batching_parameters(path)
    path.write_text("max_batch_size: 8\n")  # a wrapper type needs { value: ... }
    with pytest.raises(ConfigFileError, match=r"batching\.config:1:"):
        load_batching_parameters(path)
    path.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n")
    with pytest.raises(ConfigFileError, match="last allowed_batch_sizes entry must equal"):
        load_batching_parameters(path)


def test_flags_accept_both_spellings_and_tf_serving_defaults():
    a = parse_args(["--model_name", "m", "--model_base_path=/models/m", "--enable_batching"])
    assert (a.port, a.rest_api_port, a.file_system_poll_wait_seconds) == (8500, 8501, 1)
    assert a.enable_batching is True and a.enable_model_warmup is True
    assert a.prefer_tflite_model is False
    assert parse_args(["--model_base_path=/m", "--prefer_tflite_model"]).prefer_tflite_model
    b = parse_args(["--model_name=m", "--model_base_path", "/models/m", "--enable_batching=false"])
    assert b.enable_batching is False and b.model_base_path == "/models/m"
    c = parse_args(["--model_config_file=serving/config/models.config", "--port=9000"])
    assert c.model_config_file and c.port == 9000 and c.model_name is None


def test_version_labels_for_unavailable_models_flag():
    # The shipped models.config labels version 2 before it exists: the manifests pass this flag,
    # which TF Serving needs to start with such a label and which this server must accept.
    base = ["--model_config_file=serving/config/models.config"]
    assert parse_args(base).allow_version_labels_for_unavailable_models is False
    flag = "--allow_version_labels_for_unavailable_models"
    assert parse_args([*base, f"{flag}=true"]).allow_version_labels_for_unavailable_models is True
    assert parse_args([*base, flag]).allow_version_labels_for_unavailable_models is True


def test_grpc_threads_must_be_positive(capsys):
    assert parse_args(["--model_base_path=/m", "--grpc_max_threads=1"]).grpc_max_threads == 1
    with pytest.raises(SystemExit) as exc:
        parse_args(["--model_base_path=/m", "--grpc_max_threads=0"])
    assert exc.value.code == 2
    assert "--grpc_max_threads" in capsys.readouterr().err


def test_the_grpc_pool_has_all_its_threads_from_the_start():
    # A pool that grew on demand would add threads under load: a soak would see a "leak".
    import threading

    from serving.modelserver.grpc_service import prestarted_executor

    before = {t.ident for t in threading.enumerate()}
    executor = prestarted_executor(5)
    try:
        started = [t for t in threading.enumerate() if t.ident not in before]
        assert len(started) == 5
        assert all(t.name.startswith("grpc") for t in started)
        for _ in range(50):
            executor.submit(lambda: None).result()
        assert len([t for t in threading.enumerate() if t.ident not in before]) == 5
    finally:
        executor.shutdown()
