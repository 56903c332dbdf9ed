# One entry point per task, the same locally and in CI.
#   make run    set up, start the local broker, run the demo (worker + sample events + predictions)
#   make test   set up, start the local broker, run unit and integration tests
SHELL := /bin/bash
.DEFAULT_GOAL := help
# The one cached environment (scripts/venv.sh), with the extras each target needs added on first use:
# run needs none; lint and the tests dev, text, onnx, tracing, registry, mlflow; the benchmarks text, onnx, bench,
# registry.
venv = $(shell scripts/venv.sh $(1))
TEST_EXTRAS = dev text onnx tracing registry mlflow
PYTHON = $(call venv,$(TEST_EXTRAS))/bin/python
export PYTHONPATH := $(CURDIR)

.PHONY: help venv kafka-up kafka-down kafka-status registry-up registry-down registry-status run test test-unit lint bench bench-quick bench-formats profile model settings-table clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

venv: ## create (or reuse) the cached virtual environment with the test extras; EXTRAS="..." picks others
	@echo "$(call venv,$(if $(EXTRAS),$(EXTRAS),$(TEST_EXTRAS)))"

kafka-up: ## start the local Kafka broker (no-op when up); FRESH=1 wipes its data first; BROKERS=3 a cluster
	@kafka/kafka.sh up $(if $(FRESH),--fresh) $(if $(BROKERS),--brokers $(BROKERS))

kafka-down: ## stop the local Kafka broker (no-op when down); BROKERS=3 the local cluster
	@kafka/kafka.sh down $(if $(BROKERS),--brokers $(BROKERS))

kafka-status: ## say whether the broker answers; BROKERS=3 whether the cluster is up and fully in sync
	@kafka/kafka.sh status $(if $(BROKERS),--brokers $(BROKERS))

registry-up: ## start the local Schema Registry (Apicurio, Confluent API; no-op when up)
	@registry/registry.sh up

registry-down: ## stop the local Schema Registry (no-op when down)
	@registry/registry.sh down

registry-status: ## say whether the Schema Registry answers
	@registry/registry.sh status

run: kafka-up ## the demo: a worker with the default model, sample events in, predictions out
	@$(call venv,)/bin/python -m app demo
	@echo "run the worker yourself (README.md, Install): in a virtual environment,"
	@echo "  pip install -c requirements/constraints.txt .   then   inference-worker worker"
	@echo "or from this checkout: PYTHONPATH=$(CURDIR) $(call venv,)/bin/python -m app worker"

test: kafka-up ## unit and integration tests against the real local broker
	@$(PYTHON) -m pytest -q tests

test-unit: ## unit tests only (no broker)
	@$(PYTHON) -m pytest -q tests/unit

lint: ## ruff, mypy, and the import contracts (import-linter: layers, private upstream APIs)
	@$(PYTHON) -m ruff check .
	@$(PYTHON) -m ruff format --check .
	@$(PYTHON) -m mypy
	@$(dir $(PYTHON))lint-imports

BENCH_PYTHON = $(call venv,text onnx bench registry)/bin/python

REPLICAS ?= 2

bench: kafka-up ## every system, every model size, 3 shuffled rounds (35-40 minutes on 2 cores); REPLICAS=4: replicas section
	@$(BENCH_PYTHON) -m benchmarks.bench --replicas $(REPLICAS)

bench-quick: kafka-up ## this worker against the bare aiokafka loop, no-op and default model, 3 rounds (~7 minutes)
	@$(BENCH_PYTHON) -m benchmarks.bench --quick --events 10000 --seconds 3 --models noop,mlp --latency-models noop,mlp --systems inference-worker,bare-aiokafka

bench-formats: kafka-up registry-up ## this worker's throughput with Avro in and out against JSON (a few minutes)
	@SCHEMA_REGISTRY_URL=$$(registry/registry.sh url) $(BENCH_PYTHON) -m benchmarks.bench --formats --events 20000

SIZE ?= mlp

profile: kafka-up ## py-spy profile of the worker draining a backlog (SIZE=noop|mlp|mlp-10x|minilm); writes /tmp/profile
	@$(BENCH_PYTHON) -m benchmarks.profile --size $(SIZE) --out /tmp/profile

settings-table: ## rewrite the README's settings table from app/settings.py
	@$(call venv,)/bin/python -c 'import pathlib, re; from app.settings import markdown_table; p = pathlib.Path("README.md"); \
	  p.write_text(re.sub(r"(<!-- settings-table:start -->\n).*?(\n<!-- settings-table:end -->)", lambda m: m[1] + markdown_table() + m[2], p.read_text(), flags=re.S))'

model: ## retrain the default model into models/ (needs the dev extras: scikit-learn)
	@$(PYTHON) scripts/train_default_model.py

clean: ## remove local state of this clone (not the cached venv or broker)
	rm -rf .worker-data .model-cache .pytest_cache .mypy_cache .ruff_cache
