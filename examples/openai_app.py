"""llmtrace with the OpenAI SDK: the one-liner, tags, and a streamed answer.

    OPENAI_API_KEY=... python examples/openai_app.py
    # any OpenAI-compatible server works too: OPENAI_BASE_URL=http://localhost:8000/v1

Spans go to the local store (./.llmtrace/llmtrace.duckdb; see `llmtrace report`) and, when
OTEL_EXPORTER_OTLP_ENDPOINT is set, to your OpenTelemetry backend (Jaeger, Tempo, a Collector).
"""

from __future__ import annotations

import openai

import llmtrace

llmtrace.instrument()  # before or after importing openai: both work


def main() -> None:
    client = openai.OpenAI()
    with llmtrace.tags(tenant="acme", feature="support-bot", user="user-42"):
        answer = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Say hello in five words."}],
            max_tokens=20,
        )
        print(answer.choices[0].message.content)

        # Streams carry usage too: llmtrace asks api.openai.com for it and hides the extra chunk.
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Count to five."}],
            stream=True,
        )
        for chunk in stream:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
        print()


if __name__ == "__main__":
    main()
