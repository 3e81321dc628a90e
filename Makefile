# The two commands: `make demo` and `make test`. Both install what they need and are safe
# to run twice.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: install demo test test-fast lint typecheck infra down status clean-state bench capacity chaos

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
	FIELDTRACK_STATE_DIR=$(CURDIR)/.state/bench FIELDTRACK_LOCAL_PG_PORT=54349 \
		FIELDTRACK_LOCAL_MQTT_PORT=18850 $(BIN)/fieldtrack infra down
	FIELDTRACK_STATE_DIR=$(CURDIR)/.state/chaos-cluster FIELDTRACK_LOCAL_PG_PORT=54379 \
		FIELDTRACK_LOCAL_MQTT_PORT=18890 FIELDTRACK_LOCAL_NATS_PORT=14260 \
		FIELDTRACK_LOCAL_NATS_MQTT_PORT=18891 $(BIN)/fieldtrack infra down
	FIELDTRACK_STATE_DIR=$(CURDIR)/.state/capacity FIELDTRACK_LOCAL_PG_PORT=54369 \
		FIELDTRACK_LOCAL_MQTT_PORT=18870 $(BIN)/fieldtrack infra down
	FIELDTRACK_STATE_DIR=$${FIELDTRACK_CHAOS_STATE_DIR:-$(CURDIR)/.state/chaos} \
	  FIELDTRACK_LOCAL_PG_PORT=$${FIELDTRACK_LOCAL_PG_PORT:-54359} \
	  FIELDTRACK_LOCAL_MQTT_PORT=$${FIELDTRACK_LOCAL_MQTT_PORT:-18860} $(BIN)/fieldtrack infra down

# lint-imports: the layers of docs/architecture.md ([tool.importlinter] in pyproject.toml);
# an import that points up or sideways fails here.
lint: install
	$(BIN)/ruff check services device_sim bench tests
	$(BIN)/ruff format --check services device_sim bench tests
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

# The test session starts its own TimescaleDB and Mosquitto (state in .state/test, other
# ports), so it never touches the demo's data.
test: lint typecheck
	scripts/run-pytest $(PYTEST_ARGS)

# The unit tier only: no services, under a minute.
test-fast: install
	scripts/run-pytest -m unit tests/unit $(PYTEST_ARGS)

# Ingest measured against the broker's and PostgreSQL's own ceilings and a naive consumer, on
# the bench's own services (.state/bench, ports 54349/18850); report in .state/bench/report.
# BENCH_ARGS="--quick" for a smoke run, "--only ingest" etc. for parts.
bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The capacity model: each component's cost per message, row, connection and provisioned
# device on this machine, projected to 10k, 100k and 1M devices (docs/scaling.md), on its own
# services (.state/capacity, ports 54369/18870); report in .state/capacity/capacity.md.
# CAPACITY_ARGS="--quick" for a smoke run, "--usage-every 30" etc. for other rates.
capacity: install
	$(BIN)/python -m bench.capacity $(CAPACITY_ARGS)

# The fault suite, long version: its own TimescaleDB and Mosquitto (.state/chaos, ports 54359
# and 18860 unless FIELDTRACK_LOCAL_PG_PORT / _MQTT_PORT say otherwise), every fault under
# load, then a report in .state/chaos/report/. CHAOS_ARGS="--only burst-2x" runs a subset
# (its report in .state/chaos/report-partial/). Then the NATS cluster's faults with 2,000 devices
# (.state/chaos-cluster, its own ports; CLUSTER_CHAOS_ARGS="--devices 500" for a smaller run).
chaos: install
	$(BIN)/python -m tests.integration.chaos $(CHAOS_ARGS)
	$(BIN)/python -m tests.integration.cluster_chaos $(CLUSTER_CHAOS_ARGS)
