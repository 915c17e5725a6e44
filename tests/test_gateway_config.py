"""GatewayConfig: env parsing, validation messages, overrides; the CLI's config errors."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving.gateway.config import DEFAULT_MAX_PIXELS, ConfigError, GatewayConfig, env_name

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_match_the_design():
    cfg = GatewayConfig.from_env({})
    assert cfg.backend == "embedded:models/fashion_mnist"
    assert (cfg.backend_kind, cfg.backend_target) == ("embedded", "models/fashion_mnist")
    assert cfg.model_name == "fashion_mnist"
    assert cfg.model_version is None and cfg.model_label is None
    assert cfg.port == 8080
    assert cfg.max_body_bytes == 10 * 1024 * 1024
    assert cfg.max_batch == 256
    assert cfg.embedded_options()["prefer_tflite_model"] is True


def test_default_pixel_limit_is_the_preprocessing_guard():
    from serving.preprocess import MAX_PIXELS

    assert DEFAULT_MAX_PIXELS == MAX_PIXELS


def test_from_env_parses_every_type():
    cfg = GatewayConfig.from_env(
        {
            "GATEWAY_BACKEND": "grpc://tfserving:8500",
            "GATEWAY_MODEL_NAME": "other",
            "GATEWAY_MODEL_VERSION": "7",
            "GATEWAY_TIMEOUT_SECONDS": "0.5",
            "GATEWAY_RETRIES": "0",
            "GATEWAY_MAX_BODY_BYTES": "1024",
            "GATEWAY_MAX_BATCH": "8",
            "GATEWAY_MAX_PIXELS": "100",
            "GATEWAY_PORT": "9000",
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_WORKERS": "3",
            "GATEWAY_THREADS": "4",
            "GATEWAY_ACCESS_LOG": "true",
            "GATEWAY_BATCH_TIMEOUT_MS": "0",
            "GATEWAY_PREFER_TFLITE_MODEL": "false",
            "GATEWAY_UNRELATED": "ignored",
            "GATEWAY_LOG_LEVEL": " ",  # blank = default
        }
    )
    assert (cfg.backend_kind, cfg.backend_target) == ("grpc", "tfserving:8500")
    assert cfg.model_name == "other"
    assert cfg.model_version == 7
    assert cfg.timeout_seconds == 0.5
    assert cfg.retries == 0
    assert (cfg.max_body_bytes, cfg.max_batch, cfg.max_pixels) == (1024, 8, 100)
    assert (cfg.host, cfg.port, cfg.workers, cfg.threads) == ("127.0.0.1", 9000, 3, 4)
    assert cfg.access_log is True
    assert cfg.batch_timeout_ms == 0.0
    assert cfg.prefer_tflite_model is False
    assert cfg.log_level == "INFO"


def test_rest_backend_target_is_the_base_url():
    cfg = GatewayConfig.from_env({"GATEWAY_BACKEND": "http://tfserving:8501/"})
    assert (cfg.backend_kind, cfg.backend_target) == ("http", "http://tfserving:8501")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"GATEWAY_MODEL_VERSION": "2", "GATEWAY_MODEL_LABEL": "canary"},
            "set GATEWAY_MODEL_VERSION or GATEWAY_MODEL_LABEL, not both",
        ),
        ({"GATEWAY_MAX_BATCH": "many"}, "GATEWAY_MAX_BATCH: expected an integer >= 1, got 'many'"),
        (
            {"GATEWAY_TIMEOUT_SECONDS": "soon"},
            "GATEWAY_TIMEOUT_SECONDS: expected a finite number > 0, got 'soon'",
        ),
        (
            {"GATEWAY_ACCESS_LOG": "maybe"},
            "GATEWAY_ACCESS_LOG: expected a boolean (1/0, true/false), got 'maybe'",
        ),
        ({"GATEWAY_MAX_BATCH": "0"}, "GATEWAY_MAX_BATCH: expected an integer >= 1, got '0'"),
        ({"GATEWAY_RETRIES": "-1"}, "GATEWAY_RETRIES: expected an integer >= 0, got '-1'"),
        ({"GATEWAY_PORT": "70000"}, "GATEWAY_PORT: expected an integer in [1, 65535], got '70000'"),
        (
            {"GATEWAY_MODEL_VERSION": "0"},
            "GATEWAY_MODEL_VERSION: expected an integer >= 1, got '0'",
        ),
        (
            {"GATEWAY_TIMEOUT_SECONDS": "0"},
            "GATEWAY_TIMEOUT_SECONDS: expected a finite number > 0, got '0'",
        ),
        (
            {"GATEWAY_BACKEND": "tfserving:8500"},
            "GATEWAY_BACKEND='tfserving:8500': expected grpc://host:port, http://host:port "
            "or embedded:<path>",
        ),
        (
            {"GATEWAY_BACKEND": "grpc://tfserving"},
            "GATEWAY_BACKEND='grpc://tfserving': expected grpc://host:port",
        ),
        (
            {"GATEWAY_BACKEND": "embedded:"},
            "GATEWAY_BACKEND='embedded:': expected embedded:<path to the model base dir>",
        ),
        (
            {"GATEWAY_MODEL_LABEL": "canary"},
            "GATEWAY_MODEL_LABEL needs a grpc:// or http:// backend (version labels live in "
            "TF Serving's model config)",
        ),
        (
            {"GATEWAY_WORKER_CLASS": "sync"},
            "GATEWAY_WORKER_CLASS='sync': expected one of gevent, gthread",
        ),
        (
            {"GATEWAY_WORKER_CONNECTIONS": "0"},
            "GATEWAY_WORKER_CONNECTIONS: expected an integer >= 1, got '0'",
        ),
        (
            {"GATEWAY_LOG_LEVEL": "LOUD"},
            "GATEWAY_LOG_LEVEL='LOUD': expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
        ),
    ],
)
def test_bad_values_raise_one_clear_message(env, message):
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_env(env)
    assert str(info.value) == message


def test_label_is_accepted_with_a_remote_backend():
    cfg = GatewayConfig.from_env(
        {"GATEWAY_BACKEND": "grpc://localhost:8500", "GATEWAY_MODEL_LABEL": "canary"}
    )
    assert cfg.model_label == "canary"


def test_overrides_parse_strings_and_reject_unknown_names():
    base = GatewayConfig.from_env({})
    cfg = base.with_overrides({"max_batch": "4", "timeout_seconds": 1})
    assert (cfg.max_batch, cfg.timeout_seconds) == (4, 1)
    assert base.max_batch == 256  # frozen: the original is unchanged
    with pytest.raises(ConfigError, match="unknown gateway setting 'max_batches'"):
        base.with_overrides({"max_batches": 4})
    with pytest.raises(ConfigError, match="GATEWAY_MAX_BATCH='4' must be int"):
        GatewayConfig(max_batch="4")  # type: ignore[arg-type]


def test_create_app_reads_env_then_applies_overrides(monkeypatch):
    from serving.gateway import create_app
    from tests.support.gateway import FakeBackend

    monkeypatch.setenv("GATEWAY_MAX_BATCH", "9")
    monkeypatch.setenv("GATEWAY_MAX_BODY_BYTES", "5000")
    app = create_app({"max_body_bytes": 6000}, backend=FakeBackend())
    cfg = app.config["GATEWAY"]
    assert (cfg.max_batch, cfg.max_body_bytes) == (9, 6000)
    assert app.config["MAX_CONTENT_LENGTH"] == 6000


def test_create_app_rejects_a_bad_env(monkeypatch):
    from serving.gateway import create_app
    from tests.support.gateway import FakeBackend

    monkeypatch.setenv("GATEWAY_MODEL_VERSION", "1")
    monkeypatch.setenv("GATEWAY_MODEL_LABEL", "stable")
    with pytest.raises(ConfigError, match="not both"):
        create_app(backend=FakeBackend())


def _run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "serving.gateway", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_config_error_is_one_line_and_exit_2():
    proc = _run_cli({"GATEWAY_MODEL_VERSION": "1", "GATEWAY_MODEL_LABEL": "stable"})
    assert proc.returncode == 2
    assert proc.stderr == (
        "serving.gateway: configuration error: set GATEWAY_MODEL_VERSION or "
        "GATEWAY_MODEL_LABEL, not both\n"
    )
    assert proc.stdout == ""


def test_cli_bad_port_argument_is_an_argparse_error():
    proc = _run_cli({}, "--port", "eighty")
    assert proc.returncode == 2
    assert "argument --port: expected an integer in [1, 65535], got 'eighty'" in proc.stderr
    assert "Traceback" not in proc.stderr


FLOAT_SETTINGS = sorted(
    env_name(f.name) for f in dataclasses.fields(GatewayConfig) if f.type in ("float", float)
)


def test_every_float_setting_is_known():
    assert FLOAT_SETTINGS == [
        "GATEWAY_BATCH_TIMEOUT_MS",
        "GATEWAY_CLIENT_TIMEOUT_SECONDS",
        "GATEWAY_MODEL_POLL_SECONDS",
        "GATEWAY_READY_CACHE_SECONDS",
        "GATEWAY_TIMEOUT_SECONDS",
    ]


@pytest.mark.parametrize("name", FLOAT_SETTINGS)
@pytest.mark.parametrize("raw", ["inf", "-inf", "nan", "Infinity", "1e999"])
def test_non_finite_durations_are_refused_naming_the_variable(name, raw):
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_env({name: raw})
    assert str(info.value).startswith(f"{name}: expected a finite number ")
    assert str(info.value).endswith(f", got {raw!r}")


@pytest.mark.parametrize("field", ["timeout_seconds", "ready_cache_seconds"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_non_finite_values_set_in_code_are_refused(field, value):
    with pytest.raises(ConfigError, match=rf"^{env_name(field)}: expected a finite number"):
        GatewayConfig(**{field: value})


def test_cli_non_finite_timeout_is_one_line_and_exit_2():
    proc = _run_cli({"GATEWAY_TIMEOUT_SECONDS": "inf"}, "--check")
    assert proc.returncode == 2
    assert proc.stderr == (
        "serving.gateway: configuration error: GATEWAY_TIMEOUT_SECONDS: expected a finite "
        "number > 0, got 'inf'\n"
    )
    assert proc.stdout == ""


def test_cli_check_prints_the_effective_config():
    proc = _run_cli({"GATEWAY_BACKEND": "grpc://localhost:8500"}, "--check", "--port", "9999")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "GATEWAY_BACKEND=grpc://localhost:8500" in lines
    assert "GATEWAY_PORT=9999" in lines
    assert "GATEWAY_MODEL_VERSION=" in lines


def test_gunicorn_cmd_args_override_the_gateway_settings(monkeypatch):
    from serving.gateway.__main__ import GatewayApplication

    monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
    default = GatewayApplication(prog="test").cfg
    assert default.worker_class_str == "serving.gateway.gevent_worker.BufferingGeventWorker"
    monkeypatch.setenv("GUNICORN_CMD_ARGS", "--workers 3 --timeout 7 --worker-class gthread")
    cfg = GatewayApplication(prog="test").cfg
    assert (cfg.workers, cfg.timeout, cfg.worker_class_str) == (3, 7, "gthread")
    assert cfg.threads == default.threads  # what the variable does not name stays


def test_metrics_dir_fresh_per_run_and_removed_at_exit(monkeypatch):
    from serving.gateway import gunicorn_conf

    # setenv first so that monkeypatch restores the original state of both variables, which
    # prepare_metrics_dir() sets in os.environ itself
    for name in ("PROMETHEUS_MULTIPROC_DIR", "CONVSERVE_GATEWAY_OWNS_METRICS_DIR"):
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    path = Path(gunicorn_conf.prepare_metrics_dir())
    try:
        assert path.is_dir() and list(path.iterdir()) == []
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(path)
        (path / "counter_1.db").write_bytes(b"x")
        gunicorn_conf.remove_metrics_dir()
        assert not path.exists()
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_given_metrics_dir_is_emptied_of_old_files_but_kept(monkeypatch, tmp_path):
    from serving.gateway import gunicorn_conf

    (tmp_path / "counter_123.db").write_bytes(b"stale")
    (tmp_path / "keep.txt").write_text("not ours")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("CONVSERVE_GATEWAY_OWNS_METRICS_DIR", "placeholder")
    monkeypatch.delenv("CONVSERVE_GATEWAY_OWNS_METRICS_DIR")
    assert gunicorn_conf.prepare_metrics_dir() == str(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    gunicorn_conf.remove_metrics_dir()
    assert tmp_path.is_dir()


@pytest.mark.parametrize(
    ("kind", "worker_class"),
    [
        (None, "serving.gateway.gevent_worker.BufferingGeventWorker"),
        ("gthread", "serving.gateway.slow_clients.RequestBufferingWorker"),
    ],
)
def test_gunicorn_settings_follow_the_env(kind, worker_class):
    env = {
        "GATEWAY_PORT": "9123",
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_WORKERS": "3",
        "GATEWAY_THREADS": "5",
        "GATEWAY_WORKER_CONNECTIONS": "77",
    }
    if kind is not None:
        env["GATEWAY_WORKER_CLASS"] = kind
    code = (
        "from serving.gateway import gunicorn_conf as c;"
        "print(c.bind, c.workers, c.threads, c.worker_connections, c.worker_class, "
        "c.preload_app, c.wsgi_app)"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out == (
        f"['127.0.0.1:9123'] 3 5 77 {worker_class} False serving.gateway.app:create_app()\n"
    )
