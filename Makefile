# Two commands on a fresh machine: `make demo` and `make test`. Both create what they need.
PYTHON ?= python3
VENV ?= .venv
# The newest release of each SDK's previous major version, tested beside the newest, on the oldest
# OpenTelemetry SDK, DuckDB, Arrow and Streamlit llmtrace supports (pyproject's minimums: keep them in
# step). The FastAPI example's test is left out there: its contrib instrumentation needs OpenTelemetry >= 1.41 with wrapt 2.
VENV_PREV ?= .venv-prev-sdk
PREV_SDKS = "openai>=2,<3" "anthropic>=1,<2" "opentelemetry-api==1.30.*" "opentelemetry-sdk==1.30.*" "opentelemetry-exporter-otlp==1.30.*" \
	"duckdb==2.0.*" "pyarrow==16.*" "streamlit==1.55.*"
NEEDS_NEWER_OTEL = tests/test_examples.py::test_fastapi_example_nests_llm_spans_under_requests
# Arize Phoenix, a real OpenTelemetry backend that runs offline: the OTLP integration tests start it.
# It pins SDK versions of its own, so it lives in a venv of its own and runs as a separate process.
VENV_PHOENIX ?= .venv-phoenix
PHOENIX = "arize-phoenix>=12"

# Headless Chromium for the dashboard's browser tests: Debian's package, never a browser download.
CHROMIUM ?= /usr/bin/chromium

.PHONY: demo test test-latest test-previous chromium clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test,examples]'
	touch $@

$(VENV)/.demo-installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[all]'
	touch $@

chromium:
	@test -x $(CHROMIUM) || { apt-get update -q && apt-get install -y -q chromium; }
	@test -x $(CHROMIUM) || { echo "make test needs Debian's chromium at $(CHROMIUM): apt-get install chromium" >&2; exit 1; }

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

# The live demo: real SDK calls to a simulated provider, into the default store, then the dashboard.
demo: $(VENV)/.demo-installed
	$(VENV)/bin/llmtrace demo

test: test-latest test-previous

test-latest: $(VENV)/.installed $(VENV_PHOENIX)/.installed chromium
	$(VENV)/bin/python -m mypy
	LLMTRACE_PHOENIX_PYTHON=$(abspath $(VENV_PHOENIX))/bin/python $(VENV)/bin/python -m pytest -q -p no:cacheprovider

test-previous: $(VENV_PREV)/.installed $(VENV_PHOENIX)/.installed chromium
	LLMTRACE_PHOENIX_PYTHON=$(abspath $(VENV_PHOENIX))/bin/python $(VENV_PREV)/bin/python -m pytest -q -p no:cacheprovider \
		--deselect $(NEEDS_NEWER_OTEL)

clean:
	rm -rf $(VENV) $(VENV_PREV) $(VENV_PHOENIX)
