# charloop developer commands. `make run` and `make test` each set everything up first.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: help setup run test test-full lint format bench lock clean docs

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install charloop with dev tools

run: $(STAMP)  ## run the full loop on the embedded default model (params.yaml)
	$(BIN)/charloop run --params params.yaml

test: $(STAMP)  ## fast tests plus one end-to-end loop (what CI runs)
	$(BIN)/pytest -m "not slow and not gpu"

test-full: $(STAMP)  ## every test except GPU ones
	$(BIN)/pytest -m "not gpu"

lint: $(STAMP)  ## ruff lint + format check, mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)  ## benchmarks, each printed as a ratio against a naive reference
	$(BIN)/python bench/bench_generate.py
	$(BIN)/python bench/bench_filter.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_candidates.py

lock: $(STAMP)  ## pin the current environment's versions into constraints.txt
	echo '# Exact versions that `make setup` installs (pip constraints); refresh with `make lock`.' > constraints.txt
	$(BIN)/pip freeze --exclude-editable | grep -v '^charloop' >> constraints.txt

clean:  ## remove loop outputs and local stores (keeps .venv)
	rm -rf runs data .charloop

docs: $(STAMP)  ## build the documentation site into site/ (strict: warnings fail)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
