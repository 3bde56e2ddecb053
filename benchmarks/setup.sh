#!/usr/bin/env bash
# Creates the two venvs benchmarks/overhead.py runs its workers in, from PyPI:
#   $BENCH_DIR/oai3    openai 3.x + llmtrace (this checkout, editable) + OpenLLMetry,
#                      OpenInference and the official contrib instrumentation
#   $BENCH_DIR/openlit openai 2.x + OpenLIT (OpenLIT pins openai<3, so it cannot share oai3)
# Versions are pinned so runs on different days compare like with like; bump them here.
# Idempotent: a venv whose .installed marker lists the same requirements is left alone.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
D=${BENCH_DIR:-/tmp/llmtrace-bench}
PY=${PYTHON:-python3}
mkdir -p "$D"

make_venv() {  # make_venv NAME STAMP PIP_ARGS...
  local v="$D/$1" stamp="$2"; shift 2
  # The marker holds the requirement list (and STAMP), so editing a pin rebuilds that venv.
  [ "$(cat "$v/.installed" 2>/dev/null)" = "$stamp $*" ] && return 0
  rm -rf "$v"
  $PY -m venv "$v"
  "$v/bin/python" -m pip install -q --upgrade pip
  "$v/bin/python" -m pip install -q "$@"
  echo "$stamp $*" > "$v/.installed"
}

# opentelemetry-util-genai is held at 1.1b0: later releases dropped the module
# `opentelemetry.util.genai.instruments` that opentelemetry-instrumentation-openai-v2 2.4b0 imports.
# httpx: openai 3.x runs on httpx2, but opentelemetry-instrumentation-openai-v2 still imports httpx.
# STAMP: llmtrace is installed editable, so only a change of its dependencies needs a rebuild.
make_venv oai3 "$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)" --pre \
  "openai==3.54.0" "httpx2==2.16.2" "httpx==0.28.1" "opentelemetry-sdk==1.45.2" \
  "opentelemetry-instrumentation-openai==0.62.4" \
  "openinference-instrumentation-openai==0.1.66" \
  "opentelemetry-instrumentation-openai-v2==2.4b0" "opentelemetry-util-genai==1.1b0" \
  -e "$ROOT"

make_venv openlit - "openlit==1.45.0" "openai>=2,<3" "httpx==0.28.1" "opentelemetry-sdk==1.45.1"

for v in oai3 openlit; do
  echo "$v: $("$D/$v/bin/python" -c 'import openai; print("openai", openai.__version__)')"
done
echo "venvs ready under $D"
