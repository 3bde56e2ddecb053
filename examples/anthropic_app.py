"""llmtrace with the Anthropic SDK: the one-liner, tags, and messages.stream().

    ANTHROPIC_API_KEY=... python examples/anthropic_app.py
    # or another Anthropic-compatible endpoint: ANTHROPIC_BASE_URL=http://localhost:8000

One span per call, with cache-read and cache-write tokens and the cost in USD. anthropic >= 2
traces itself by default; llmtrace turns that off while it is instrumented, so a call is one span.
"""

from __future__ import annotations

import anthropic

import llmtrace

llmtrace.instrument()


def main() -> None:
    client = anthropic.Anthropic()
    with llmtrace.tags(tenant="globex", feature="summarize", session="conversation-7"):
        message = client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=50,
            messages=[{"role": "user", "content": "Say hello in five words."}],
        )
        print(message.content[0].text)

        with client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=50,
            messages=[{"role": "user", "content": "Count to five."}],
        ) as stream:
            for text in stream.text_stream:
                print(text, end="", flush=True)
        print()


if __name__ == "__main__":
    main()
