"""An app process that spends against a shared ``block`` budget until it is refused (run by test_enforce)."""

from __future__ import annotations

import json
import sys
import time

import openai

import llmtrace
from conftest import http_module, openai_client
from fake_api import FakeAPI

if __name__ == "__main__":  # python budget_worker.py DB CONFIG CALLS_PER_SECOND
    db, config, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
    llmtrace.instrument(db=db, config_file=config, budget_refresh_interval=0.5, flush_interval=0.5,
                        anomaly_detectors=[], service_name="budget-worker")  # fmt: skip
    client = openai_client(FakeAPI(http_module(openai)))
    calls, refused = 0, None
    started = time.monotonic()
    while calls < 5000:
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        except llmtrace.BudgetExceeded as exc:
            refused = str(exc)
            break
        calls += 1
        time.sleep(max(0.0, started + calls / rate - time.monotonic()))
    elapsed = time.monotonic() - started
    llmtrace.uninstrument()
    print(json.dumps({"calls": calls, "elapsed": elapsed, "refused": refused}), flush=True)
