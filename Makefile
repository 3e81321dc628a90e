# The two commands: `make demo` and `make test`. Both install what they need and are safe
# to run twice.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: install demo test test-fast lint typecheck infra down status clean-state chaos

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

infra: install
	$(BIN)/fieldtrack infra up

demo: infra
	$(BIN)/fieldtrack demo

status: install
	$(BIN)/fieldtrack infra status

down: install
	$(BIN)/fieldtrack infra down
	FIELDTRACK_STATE_DIR=$(CURDIR)/.state/test $(BIN)/fieldtrack infra down
	FIELDTRACK_STATE_DIR=$${FIELDTRACK_CHAOS_STATE_DIR:-$(CURDIR)/.state/chaos} \
	  FIELDTRACK_LOCAL_PG_PORT=$${FIELDTRACK_LOCAL_PG_PORT:-54359} \
	  FIELDTRACK_LOCAL_MQTT_PORT=$${FIELDTRACK_LOCAL_MQTT_PORT:-18860} $(BIN)/fieldtrack infra down

lint: install
	$(BIN)/ruff check services device_sim tests
	$(BIN)/ruff format --check services device_sim tests

typecheck: install
	$(BIN)/mypy

# The test session starts its own TimescaleDB and Mosquitto (state in .state/test, other
# ports), so it never touches the demo's data.
test: lint typecheck
	scripts/run-pytest $(PYTEST_ARGS)

test-fast: install
	scripts/run-pytest -m "not integration" $(PYTEST_ARGS)

# The fault suite, long version: its own TimescaleDB and Mosquitto (.state/chaos, ports 54359
# and 18860 unless FIELDTRACK_LOCAL_PG_PORT / _MQTT_PORT say otherwise), every fault under
# load, then a report in .state/chaos/report/. CHAOS_ARGS="--only burst-2x" runs a subset.
chaos: install
	$(BIN)/python -m tests.integration.chaos $(CHAOS_ARGS)
