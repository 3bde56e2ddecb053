"""A multi-tenant FastAPI app: each request is tagged with its tenant and feature, and its LLM spans
nest under the request's span.

    pip install 'llmtrace[examples]'
    OPENAI_API_KEY=... uvicorn examples.fastapi_multitenant:app --port 8080
    curl -H 'X-Tenant: acme' 'localhost:8080/summarize?text=...'

Then `llmtrace report --by tenant` shows spend per tenant, and a tracing backend (OTEL_EXPORTER_OTLP_ENDPOINT)
shows `GET /summarize` with its `chat gpt-4o-mini` child span.
"""

from __future__ import annotations

import openai
from fastapi import FastAPI, Header
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

import llmtrace

llmtrace.instrument()  # first: FastAPI's request spans then go through the same tracer provider

app = FastAPI()
FastAPIInstrumentor.instrument_app(app)
client = openai.AsyncOpenAI()


@app.get("/summarize")
async def summarize(text: str, x_tenant: str = Header(default="anonymous")) -> dict[str, str]:
    with llmtrace.tags(tenant=x_tenant, feature="summarize"):
        answer = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Summarize in one line: {text}"}],
            max_tokens=60,
        )
    return {"summary": answer.choices[0].message.content or ""}
