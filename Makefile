# One-command entry points. Each target creates the virtual environment when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
RBV := $(VENV)/bin/rbv
PYTEST_ARGS ?=

.PHONY: setup quickstart test test-all lint bench support-matrix clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# torch first, by range: where a local wheel cap exists pip takes those wheels
	$(PY) -m pip install --quiet "torch>=2.3,<3" "torchvision>=0.18"
	$(PY) -m pip install --quiet -e ".[dev]"
	@# torchattacks pins requests~=2.25.1 (it never imports requests): install it without
	@# its dependencies so requests/urllib3/idna stay current. Its real needs are ours too.
	$(PY) -m pip install --quiet --no-deps "torchattacks>=3.5,<4"
	touch $@

setup: $(VENV)/.installed ## create .venv and install everything

quickstart: setup ## run the embedded quickstart suite (trains the digits ViT on first use)
	$(RBV) evaluate suites/quickstart.yaml

test: setup ## the default test run (fast; excludes slow and ray tests)
	$(PY) -m pytest -m "not slow and not ray" $(PYTEST_ARGS)

test-all: setup ## every test, slow ones included
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup ## ruff on the code, then mypy on the package (settings: pyproject.toml [tool.mypy])
	$(VENV)/bin/ruff check robustbench_vit attacks defenses tests benchmarks tools
	$(VENV)/bin/mypy

support-matrix: setup ## regenerate README's support matrix from suites/families.yaml's plan
	$(PY) tools/support_matrix.py README.md

bench: setup
	$(PY) benchmarks/attack_overhead.py

clean:
	rm -rf $(VENV) .cache results/rbv.sqlite*
