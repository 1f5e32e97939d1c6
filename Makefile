# fedi-filter-proxy: `make run` to serve on config/default.yaml, `make test` to run the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/default.yaml
# torch/torchvision pinned to the releases this project is tested with
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install run test test-fast test-slow bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[test]' $(TORCH_PINS)
	touch $(STAMP)

run: install
	$(BIN)/fedi-filter serve --config $(CONFIG)

# Lint, type check, the default suite, then the slow tests (real processes of serve and egress): what CI runs.
test: install
	bash scripts/install-test-tools.sh
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -rs -m "not slow"
	$(BIN)/python -m pytest -q -rs -m slow

test-fast: install
	bash scripts/install-test-tools.sh
	$(BIN)/python -m pytest -q -rs -m "not slow"

# The figures of BENCHMARKS.md (several minutes on 2 cores).
bench: install
	$(BIN)/python bench/bench_classifier.py --model ViT-B-32
	$(BIN)/python bench/bench_validate.py --model ViT-B-32 --requests 48
	$(BIN)/python bench/bench_detectors.py
	$(BIN)/python bench/bench_banks.py
	$(BIN)/python bench/bench_validate.py --config config/cpu.yaml --requests 96
	$(BIN)/python bench/false_positives.py
	$(BIN)/python bench/bench_sweep.py --files 1000
	$(BIN)/python bench/bench_passthrough.py
	$(BIN)/python bench/bench_egress.py
	$(BIN)/python bench/bench_workers.py
	$(BIN)/python bench/bench_feed.py
	$(BIN)/python bench/bench_decode_pool.py
	$(BIN)/python bench/bench_nginx.py
	$(BIN)/python bench/bench_egress_bare.py

clean:
	rm -rf $(VENV) var .pytest_cache
