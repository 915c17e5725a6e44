"""loadtest.peers: the peers' command lines, environments, request/answer formats and installer.

No peer is started here (their venvs are not part of a test run); what is checked is what the
launcher and the load test rely on. Their end-to-end check is by hand (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import ast
import base64
import json
import sys
from importlib import metadata
from pathlib import Path

import pytest

from loadtest.peers import __main__ as peers_cli
from loadtest.peers import registry
from loadtest.peers.model import BATCH_WAIT_SECONDS, MAX_BATCH_SIZE, WORKERS
from serving.contract import CLASS_NAMES

PEERS_PKG = Path(registry.__file__).parent
PNG = (registry.REPO_ROOT / "tests" / "support" / "images" / "bag.png").read_bytes()


def _classes_in(module_file: Path) -> set[str]:
    tree = ast.parse(module_file.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.ClassDef)}


@pytest.mark.parametrize("name", sorted(registry.PEERS))
def test_command_line_runs_the_peer_from_its_own_venv(name, tmp_path):
    argv = registry.peer_command(name, 8123, Path("models/fashion_mnist"), tmp_path)
    venv_bin = tmp_path / name / "bin"
    assert Path(argv[0]).parent == venv_bin  # never the project's interpreter
    assert argv[0] != sys.executable
    assert all(isinstance(a, str) and a for a in argv)
    service = PEERS_PKG / f"{name}_service.py"
    assert service.is_file()
    if name == "bentoml":
        assert argv[1] == "serve"
        module, cls = argv[2].split(":")
        assert module == "loadtest.peers.bentoml_service"
        assert cls in _classes_in(service)
        assert argv[argv.index("--port") + 1] == "8123"
        assert argv[argv.index("--host") + 1] == "127.0.0.1"
    elif name == "litserve":
        assert argv[1:4] == ["-m", "loadtest.peers.litserve_service", "--port"]
        assert argv[4] == "8123"
    else:
        assert argv[1:] == ["start", "."]


def test_mlserver_environment_carries_ports_batching_and_runtime(tmp_path):
    env = registry.peer_env("mlserver", tmp_path, http_port=8001, grpc_port=8002, metrics_port=8003)
    assert (env["MLSERVER_HTTP_PORT"], env["MLSERVER_GRPC_PORT"]) == ("8001", "8002")
    assert env["MLSERVER_METRICS_PORT"] == "8003"
    assert env["MLSERVER_HOST"] == "127.0.0.1"
    assert env["MLSERVER_PARALLEL_WORKERS"] == str(WORKERS)
    assert env["MLSERVER_MODEL_MAX_BATCH_SIZE"] == str(MAX_BATCH_SIZE)
    assert float(env["MLSERVER_MODEL_MAX_BATCH_TIME"]) == BATCH_WAIT_SECONDS > 0
    module, cls = env["MLSERVER_MODEL_IMPLEMENTATION"].rsplit(".", 1)
    assert cls in _classes_in(PEERS_PKG / f"{module.rsplit('.', 1)[1]}.py")


@pytest.mark.parametrize("name", sorted(registry.PEERS))
def test_every_peer_gets_the_repo_and_the_model_dir(name, tmp_path):
    env = registry.peer_env(name, tmp_path / "fashion_mnist")
    assert env["PYTHONPATH"] == str(registry.REPO_ROOT)
    assert env["CONVSERVE_PEER_MODEL_DIR"] == str((tmp_path / "fashion_mnist").resolve())


@pytest.mark.parametrize("name", sorted(registry.PEERS))
def test_request_body_carries_every_png_in_order(name):
    other = b"\x89PNG second"
    headers, body = registry.request_body(name, [PNG, other])
    assert headers == {"Content-Type": "application/json"}
    doc = json.loads(body)
    if name == "mlserver":
        (inp,) = doc["inputs"]
        assert (inp["name"], inp["datatype"], inp["shape"]) == ("images", "BYTES", [2])
        assert inp["parameters"] == {"content_type": "base64"}
        data = inp["data"]
    else:
        assert list(doc) == ["images"]
        data = doc["images"]
    assert [base64.b64decode(s) for s in data] == [PNG, other]


# Answers as each peer wrote them when checked by hand (probabilities shortened).
ANSWERS = {
    "bentoml": [{"class_id": 8, "label": "Bag"}, {"class_id": 1, "label": "Trouser"}],
    "litserve": {"predictions": [{"class_id": 8, "label": "Bag"}, {"label": "Trouser"}]},
    "mlserver": {
        "model_name": "fashion_mnist",
        "outputs": [
            {"name": "labels", "shape": [2, 1], "datatype": "BYTES", "data": ["Bag", "Trouser"]},
            {"name": "class_ids", "shape": [2, 1], "datatype": "INT64", "data": [8, 1]},
        ],
    },
}


@pytest.mark.parametrize("name", sorted(registry.PEERS))
def test_labels_are_read_from_each_answer_shape(name):
    assert registry.labels(name, ANSWERS[name]) == ["Bag", "Trouser"]
    assert set(registry.labels(name, ANSWERS[name])) <= set(CLASS_NAMES)
    with pytest.raises(ValueError, match=f"{name} answer has an unexpected shape"):
        registry.labels(name, {"error": "boom"})


def test_peers_pin_the_projects_tensorflow_and_their_framework():
    tf = metadata.version("tensorflow")
    for peer in registry.PEERS.values():
        reqs = peer.all_requirements()
        assert any(r.endswith(f"=={tf}") and r.startswith("tensorflow") for r in reqs)
        assert any(r.startswith(f"{peer.name}==") for r in reqs)
    assert "protobuf<7" in registry.get("mlserver").requirements


def test_a_missing_peer_is_not_installed_and_names_its_install_command(tmp_path):
    for name in registry.PEERS:
        assert not registry.is_installed(name, tmp_path)
        with pytest.raises(registry.NotInstalled) as info:
            registry.start_peer(name, tmp_path, root=tmp_path)
        assert f"python -m loadtest.peers install {name}" in str(info.value)


def test_a_stamp_with_other_pins_is_not_installed(tmp_path):
    peer = registry.get("litserve")
    peer.python(tmp_path).parent.mkdir(parents=True)
    peer.python(tmp_path).write_text("")
    stamp = peer.venv(tmp_path) / registry.STAMP
    stamp.write_text(json.dumps({"requirements": peer.all_requirements()}))
    assert registry.is_installed("litserve", tmp_path)
    stamp.write_text(json.dumps({"requirements": ["litserve==0.0.1"]}))
    assert not registry.is_installed("litserve", tmp_path)


def test_cli_lists_missing_peers_with_their_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(registry.PEERS_DIR_ENV, str(tmp_path))
    assert peers_cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in registry.PEERS:
        assert f"{name:9} missing    (python -m loadtest.peers install {name})" in out


def test_cli_rejects_an_unknown_peer(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(registry.PEERS_DIR_ENV, str(tmp_path))
    with pytest.raises(SystemExit) as info:
        peers_cli.main(["install", "torchserve"])
    assert info.value.code == 2
    assert (
        "unknown peer 'torchserve' (known: bentoml, litserve, mlserver)" in capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_compare_reports_absent_peers_as_skipped_with_the_install_command(tmp_path, monkeypatch):
    from loadtest import compare

    monkeypatch.setenv(registry.PEERS_DIR_ENV, str(tmp_path / "no-peers"))
    entries = compare.select(compare.registry(), ["BentoML*", "LitServe", "MLServer"])
    assert [e.name for e in entries] == ["BentoML 1.4", "LitServe", "MLServer"]
    assert all(e.target == "peer" and e.group == "peer" for e in entries)
    assert [e.locust_args for e in entries] == [("--peer", n) for n in registry.PEERS]
    settings = compare.Settings(model_dir=tmp_path / "models", out=tmp_path / "out")
    rows = compare.run_compare(entries, settings)
    assert [(r["name"], r["status"]) for r in rows] == [(e.name, "skipped") for e in entries]
    for row, name in zip(rows, registry.PEERS, strict=True):
        assert row["reason"] == (
            f"not installed: python -m loadtest.peers install {name} (or make bench-peers)"
        )
        assert row["requests_per_second"] is None
    table = compare.markdown_table(rows)
    assert "skipped: not installed: python -m loadtest.peers install mlserver" in table
