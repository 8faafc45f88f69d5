# The two commands a newcomer needs: `make run` and `make test`.
# Everything else (`install`, `proto`, `lint`, `bench`, `test-fast`) is what those two build on.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard protos/wallet/v1/*.proto)
CLIENT := clients/python
GEN    := $(CLIENT)/src/wallet/v1/__init__.py

.PHONY: install proto stubs buf-deps lock lock-upgrade lock-check export-lock run test test-fast lint fmt bench clean

install: $(STAMP) $(GEN)

# uv, from its hashed pin, into the venv: the tool that installs everything else.
$(UV): requirements/uv.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements/uv.txt
	touch $(UV)

# Exactly the locked dev set (sync also removes what the lock does not list), then the
# two packages of this repository without dependencies, editable: the client (home of
# the generated wallet.v1 code) and the server. A generated wallet/ at the root would
# shadow the client's, so it goes.
$(STAMP): $(UV) requirements/dev.txt pyproject.toml $(CLIENT)/pyproject.toml $(CLIENT)/setup.py
	rm -rf wallet
	$(UV) pip sync --quiet --python $(BIN)/python --require-hashes requirements/dev.txt
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation \
		--config-settings editable_mode=compat -e ./$(CLIENT) -e .
	touch $(STAMP)

# Generated code lives in clients/python/src/wallet/ (git-ignored) and is never edited.
$(GEN): $(PROTOS) $(CLIENT)/generate_protos.py $(STAMP)
	$(BIN)/python $(CLIENT)/generate_protos.py

proto: $(STAMP)
	rm -f $(GEN)
	$(MAKE) $(GEN)

# Messages for other languages from protos/ into gen/ (buf.gen.yaml, offline). gRPC
# stubs for other languages: buf generate --template buf.gen.remote.yaml (needs buf.build).
stubs: install buf-deps
	$(BIN)/buf generate

# Refresh the lock after changing dependencies in either pyproject.toml (keeps every
# other pin), or move every pin to the newest allowed version (lock-upgrade); both
# re-export requirements/*.txt. lock-check (part of lint) fails while pyproject.toml, the
# lock, its exports, this environment and the code's imports disagree.
lock: $(UV)
	$(UV) lock
	$(MAKE) --no-print-directory export-lock

lock-upgrade: $(UV)
	$(UV) lock --upgrade
	$(MAKE) --no-print-directory export-lock

export-lock:
	$(UV) export --quiet --frozen --no-emit-workspace --no-default-groups -o requirements/runtime.txt
	$(UV) export --quiet --frozen --no-emit-workspace --only-group build -o requirements/build.txt
	$(UV) export --quiet --frozen --no-emit-workspace --group dev -o requirements/dev.txt
	$(UV) export --quiet --frozen --no-emit-workspace --only-group uv -o requirements/uv.txt

lock-check: install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit/test_lock.py

# google/rpc/status.proto (used by the batch RPCs' results) for buf, taken from the
# installed googleapis-common-protos so buf needs no registry.
buf-deps: install
	mkdir -p .buf-deps/google/rpc
	cp "$$($(BIN)/python -c 'import google.rpc, pathlib; print(pathlib.Path(google.rpc.__path__[0]) / "status.proto")')" .buf-deps/google/rpc/status.proto

run: install
	$(BIN)/wallet-stack

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit tier alone (tests/unit: no database server, broker or subprocess; seconds).
test-fast: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: lock-check buf-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@# The layers and what may import what (pyproject.toml, docs/architecture.md).
	$(BIN)/lint-imports --no-cache
	$(BIN)/buf lint
	@# Against the committed protos, in today's workspace (buf.yaml, google/rpc beside).
	@if git rev-parse --verify -q HEAD >/dev/null && git cat-file -e HEAD:protos 2>/dev/null; then \
		rm -rf .buf-against && mkdir .buf-against && \
		git archive HEAD protos | tar -x -C .buf-against && \
		cp -r buf.yaml .buf-deps .buf-against/ && \
		$(BIN)/buf breaking --against .buf-against; \
		status=$$?; rm -rf .buf-against; exit $$status; \
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
	rm -rf wallet $(CLIENT)/src/wallet $(CLIENT)/build var .pytest_cache .mypy_cache .ruff_cache
