# Two commands on a fresh machine: `make demo` and `make test`. Both create what they need.
PYTHON ?= python3
VENV ?= .venv
# The newest release of each SDK's previous major version, tested beside the newest.
VENV_PREV ?= .venv-prev-sdk
PREV_SDKS = "openai>=2,<3" "anthropic>=1,<2"
# Arize Phoenix, a real OpenTelemetry backend that runs offline: the OTLP integration tests start it.
# It pins SDK versions of its own, so it lives in a venv of its own and runs as a separate process.
VENV_PHOENIX ?= .venv-phoenix
PHOENIX = "arize-phoenix>=12"

.PHONY: demo test test-latest test-previous clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $@

$(VENV_PHOENIX)/.installed:
	$(PYTHON) -m venv $(VENV_PHOENIX)
	$(VENV_PHOENIX)/bin/python -m pip install -q --upgrade pip
	$(VENV_PHOENIX)/bin/python -m pip install -q $(PHOENIX)
	touch $@

$(VENV_PREV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_PREV)
	$(VENV_PREV)/bin/python -m pip install -q --upgrade pip
	$(VENV_PREV)/bin/python -m pip install -q -e '.[test]' $(PREV_SDKS)
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/python examples/recorded_traffic.py

test: test-latest test-previous

test-latest: $(VENV)/.installed $(VENV_PHOENIX)/.installed
	$(VENV)/bin/python -m mypy
	LLMTRACE_PHOENIX_PYTHON=$(abspath $(VENV_PHOENIX))/bin/python $(VENV)/bin/python -m pytest -q -p no:cacheprovider

test-previous: $(VENV_PREV)/.installed $(VENV_PHOENIX)/.installed
	LLMTRACE_PHOENIX_PYTHON=$(abspath $(VENV_PHOENIX))/bin/python $(VENV_PREV)/bin/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) $(VENV_PREV) $(VENV_PHOENIX)
