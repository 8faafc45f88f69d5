# The two commands a newcomer needs: `make run` and `make test`.
# Everything else (`install`, `proto`, `lint`, `bench`) is what those two build on.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard protos/wallet/v1/*.proto)
GEN    := wallet/v1/wallet_pb2.py

.PHONY: install proto run test test-fast lint fmt bench clean

install: $(STAMP) $(GEN)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

# Generated code lives in wallet/ (git-ignored) and is never edited by hand.
$(GEN): $(PROTOS) $(STAMP)
	rm -rf wallet
	$(BIN)/python -m grpc_tools.protoc -Iprotos \
		--python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	touch wallet/__init__.py wallet/v1/__init__.py

proto: $(STAMP)
	rm -f $(GEN)
	$(MAKE) $(GEN)

run: install
	$(BIN)/wallet-stack

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint
	@if git rev-parse --verify -q HEAD >/dev/null && git cat-file -e HEAD:protos 2>/dev/null; then \
		$(BIN)/buf breaking --against '.git#ref=HEAD'; \
	else echo "buf breaking: no committed protos to compare against"; fi
	@# The alert rules (deploy/prometheus): promtool comes with Debian's prometheus package.
	@if command -v promtool >/dev/null 2>&1; then \
		promtool check rules deploy/prometheus/alerts.yml && \
		promtool test rules deploy/prometheus/alerts_test.yml; \
	else echo "promtool not found: alert rules not checked (apt-get install prometheus)"; fi

fmt: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Benchmarks (docs/benchmarks.md); e.g. make bench BENCH_ARGS='--scale-out --duration 30'
bench: install
	$(BIN)/wallet-bench suite $(BENCH_ARGS)

clean:
	rm -rf wallet var .pytest_cache .mypy_cache .ruff_cache
