# convserve task runner. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL_DIR ?= models/fashion_mnist
# The official IDX files; on the project's dev machines they sit next to the checkout.
FASHION_MNIST_DIR ?= $(wildcard $(CURDIR)/../shared/data/fashion-mnist)
export FASHION_MNIST_DIR
# TensorFlow start-up chatter (CUDA probes, CPU feature notes) off unless asked for.
TF_CPP_MIN_LOG_LEVEL ?= 2
export TF_CPP_MIN_LOG_LEVEL
GATEWAY_PORT ?= 8080
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast lint format train train-quick evaluate inspect visualize quick-model serve-modelserver serve-modelserver-batching predict \
	bench-preprocess bench-modelserver bench-gateway bench-peers loadtest compare soak images clean \
	stack validate-deploy k8s-config

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[test,loadtest]'
	touch $(STAMP)

install: $(STAMP) ## create .venv/ and install the project with its test dependencies

quick-model: $(STAMP) ## train a quick model (1-2 minutes) unless one is exported already
	@if ls $(MODEL_DIR)/*/saved_model.pb >/dev/null 2>&1; then \
		echo "model found in $(MODEL_DIR): $$(ls $(MODEL_DIR))"; \
	else \
		$(PY) -m training train --quick --export-dir $(MODEL_DIR); \
	fi

run: quick-model ## set up, train a quick model if none exists, serve the gateway on localhost:8080
	@echo "Gateway on http://localhost:$(GATEWAY_PORT) (embedded backend on $(MODEL_DIR)). Try:"
	@echo "  curl -s -X POST --data-binary @tests/support/images/ankle_boot.png -H 'Content-Type: image/png' http://localhost:$(GATEWAY_PORT)/v1/predict"
	GATEWAY_BACKEND=$${GATEWAY_BACKEND:-embedded:$(MODEL_DIR)} GATEWAY_PORT=$(GATEWAY_PORT) $(PY) -m serving.gateway

train: $(STAMP) ## train the full recipe (~6-7.5 min on 2 cores, 93.0%) and export the next version to models/fashion_mnist
	$(PY) -m training train --export-dir $(MODEL_DIR)

train-quick: $(STAMP) ## train the quick recipe (under a minute, ~88%) and export the next version
	$(PY) -m training train --quick --export-dir $(MODEL_DIR)

evaluate: $(STAMP) ## evaluate the newest exported version on the test set
	$(PY) -m training evaluate $(MODEL_DIR)

inspect: $(STAMP) ## print the SavedModel signature of the newest version
	$(PY) -m training inspect $(MODEL_DIR)

visualize: $(STAMP) ## feature maps (three ankle boots), first-layer filters and the lesson's filter demo into runs/
	mkdir -p runs
	$(PY) -m training visualize --model $(MODEL_DIR) --class-id 9 --out runs/feature_maps.png
	$(PY) -m training filter --test-index 0 --out runs/filter.png

serve-modelserver: quick-model ## run the TF-Serving-compatible model server on :8500 (gRPC) and :8501 (REST)
	$(PY) -m serving.modelserver --model_name=fashion_mnist --model_base_path=$(abspath $(MODEL_DIR)) \
		--monitoring_config_file=serving/config/monitoring.config

serve-modelserver-batching: quick-model ## the model server with server-side batching (serving/config/batching.config)
	$(PY) -m serving.modelserver --model_name=fashion_mnist --model_base_path=$(abspath $(MODEL_DIR)) \
		--monitoring_config_file=serving/config/monitoring.config \
		--enable_batching --batching_parameters_file=serving/config/batching.config

bench-modelserver: quick-model ## model server: gRPC vs REST, batch 1/64, batching off/on (~2 min)
	$(PY) -m loadtest.modelserver --model_base_path $(abspath $(MODEL_DIR))

predict: $(STAMP) ## classify IMG (default: the reference ankle boot) through the gateway on :8080
	$(PY) -m client predict $${IMG:-tests/support/images/ankle_boot.png} --gateway http://localhost:$(GATEWAY_PORT)

bench-preprocess: quick-model ## preprocessing accuracy and speed on altered test images (docs/BENCHMARKS.md)
	$(PY) -m loadtest.preprocess --model $(MODEL_DIR)

loadtest: $(STAMP) ## 30 s Locust run against `make run`'s gateway on :8080 (GATEWAY_PORT); report in runs/loadtest/
	$(PY) -m loadtest run --target gateway --host http://127.0.0.1:$(GATEWAY_PORT) \
		--users $${USERS:-32} --duration $${DURATION:-30s} --out runs/loadtest

compare: quick-model ## start and load every configuration in turn (gateway, model server, peers, floors); table in runs/compare/
	$(PY) -m loadtest compare --model-dir $(MODEL_DIR) --users $${USERS:-32} --duration $${DURATION:-20s} --out runs/compare

soak: quick-model ## 10 min at 80% of the measured peak, gateway → model server gRPC, a new model version every 30 s; growth checks, report in runs/soak/
	$(PY) -m loadtest soak --model-dir $(MODEL_DIR) --backend $${BACKEND:-grpc} --users $${USERS:-32} \
		--fraction $${FRACTION:-0.8} --duration $${DURATION:-10m} --swap-every $${SWAP_EVERY:-30} --out runs/soak

bench-gateway: quick-model ## gateway vs instant-backend gateway vs the Flask floor under wrk, same gunicorn settings (needs wrk)
	$(PY) -m loadtest.gateway --model-dir $(MODEL_DIR) --image tests/support/images/ankle_boot.png

bench-peers: $(STAMP) ## venvs for the compare peers (BentoML, LitServe, MLServer) in CONVSERVE_PEERS_DIR, default ~/.cache/convserve/peers
	$(PY) -m loadtest.peers install

stack: quick-model ## docker-compose.yml's topology without Docker: model server (TF Serving's flags), gateway on gRPC, Prometheus if installed; Ctrl-C stops
	$(PY) -m loadtest.stack --models $(abspath $(dir $(MODEL_DIR)))

validate-deploy: $(STAMP) ## lint/validate Dockerfiles, compose, k8s, Prometheus/Grafana config and policy (no Docker needed)
	$(PY) -m pytest tests/test_deploy_validate.py tests/test_deploy_policy.py $(PYTEST_ARGS)

k8s-config: ## copy serving/config/*.config into k8s/base/tfserving-config/ (kustomize reads files only below its root)
	cp serving/config/*.config k8s/base/tfserving-config/

images: $(STAMP) ## redraw the synthetic reference images in tests/support/images
	$(PY) tests/support/make_images.py

test: $(STAMP) ## lint, then run the whole test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## tests without the slow and integration ones
	$(PY) -m pytest -m "not slow and not integration" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: ## remove caches (keeps .venv/ and models/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
