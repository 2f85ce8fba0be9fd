# The two commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint unit fuzz bench integration kafka-jars prerequisites clean

demo: $(VENV)/.installed-train prerequisites
	$(BIN)/stream demo

test: $(VENV)/.installed-test prerequisites lint
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check stream tests bench
	$(BIN)/ruff format --check stream tests bench
	$(BIN)/mypy
	# Every Avro schema against the previous commit's (the first commit: against itself).
	$(BIN)/stream schemas check --against "$$(git rev-parse -q --verify HEAD~1 || echo HEAD)"

unit: $(VENV)/.installed-test
	$(BIN)/python -m pytest tests/unit

# The bad-input properties at scale: about 20 s and 22,000 generated events per 1,000 examples.
fuzz: $(VENV)/.installed-test
	STREAM_FUZZ_EXAMPLES=$${STREAM_FUZZ_EXAMPLES:-3000} $(BIN)/python -m pytest -q -s tests/unit/test_bad_input_properties.py

# Every engine on the same data, 3 runs each, then latency at 10/50/80% of the max.
bench: $(VENV)/.installed-test prerequisites
	$(BIN)/stream bench --json .stream/bench/results.json

integration: $(VENV)/.installed-test prerequisites
	$(BIN)/python -m pytest tests/integration

# Fetch the Kafka broker jars into the cache folder now rather than at first use.
kafka-jars: $(VENV)/.installed-train
	$(BIN)/python -c "from stream.services.kafka import ensure_jars; print(ensure_jars())"

prerequisites:
	@command -v java >/dev/null || { echo "Java 17+ is needed for the local Kafka broker (e.g. apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is needed to fetch the Kafka broker jars (e.g. apt-get install maven)"; exit 1; }

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed (PYTHON=$(PYTHON))")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-train: pyproject.toml $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e ".[train]"
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $@ $(VENV)/.installed-train

clean:
	rm -rf $(VENV) .stream .mypy_cache .ruff_cache .pytest_cache
