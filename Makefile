# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch stays pinned through constraints.txt: an unpinned torch pulls a multi-GB CUDA build.
PIP_INSTALL := $(BIN)/pip install --quiet -c constraints.txt

.PHONY: setup demo test test-fast lint format bench methods-table clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; run with PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[dev]'
	@touch $(STAMP)

# The toy pipeline end to end: build (or reuse) the demo world, find its secrets, measure which the model memorized,
# build forget / kept / retain / unseen sets from them, unlearn the first forget set, print before/after.
WORLD := .cache/fabricunlearn/code_secrets
PIPE := $(WORLD)/pipeline
demo: setup
	@start=$$(date +%s); set -e; \
	$(BIN)/fabricunlearn toy build code_secrets; \
	$(BIN)/fabricunlearn scan --input $(WORLD)/corpus.jsonl --output $(PIPE)/secrets.jsonl --restart; \
	$(BIN)/fabricunlearn probe --model $(WORLD)/model --data $(PIPE)/secrets.jsonl --output $(PIPE)/probed.jsonl \
		--metrics ma,el10 --restart; \
	$(BIN)/fabricunlearn build-sets --model $(WORLD)/model --data $(PIPE)/probed.jsonl --corpus $(WORLD)/corpus.jsonl \
		--unseen $(WORLD)/unseen.jsonl --out_dir $(PIPE)/sets --overwrite --num_sets 3 --set_size 8 \
		--min_secret_tokens 8 --retain_prefix_tokens 32 --retain_new_tokens 32; \
	$(BIN)/fabricunlearn run recipes/toy_code/gd_pipeline.yaml --name demo; \
	echo "demo: $$(( $$(date +%s) - start )) s in all"

test: setup
	$(BIN)/python -m pytest -q --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" --durations=10

lint: setup
	$(BIN)/ruff check fabricunlearn tests tools
	$(BIN)/ruff format --check fabricunlearn tests tools

format: setup
	$(BIN)/ruff format fabricunlearn tests tools
	$(BIN)/ruff check --fix fabricunlearn tests tools

bench: setup
	$(BIN)/python tools/bench_loop.py
	$(BIN)/python tools/bench_metrics.py
	$(BIN)/python tools/bench_scan.py
	$(BIN)/python tools/bench_eval.py

# Every toy recipe on the CI world, then `compare`: the table and plot of docs/methods.md (a few minutes).
methods-table: setup
	$(BIN)/python tools/compare_toy_methods.py

clean:
	rm -rf $(VENV) .cache runs .pytest_cache
