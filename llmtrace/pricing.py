"""USD cost of a call, from genai-prices data resolved once per (provider, model).

genai-prices' own ``calc_price`` costs ~60-80 µs a call, too slow for the request path, so each
(provider, model) is resolved once into a :class:`Price` of plain floats and cached; a call's cost is
then a handful of multiplications. Users add or override prices (fine-tunes, self-hosted models)
with :func:`set_price`, ``instrument(prices=...)`` or ``[prices."model"]`` in ``llmtrace.toml`` (for every provider;
``provider_prices=`` / ``[provider_prices."provider"."model"]`` for one provider's calls alone).
An unknown model has no cost (never 0): the span says ``llmtrace.cost.unpriced``.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, NamedTuple

from .config import ConfigError
from .usage import Usage

logger = logging.getLogger("llmtrace")

SOURCE_GENAI_PRICES = "genai-prices"
SOURCE_OVERRIDE = "override"

# semconv provider name -> genai-prices provider id (facts from both projects' data)
_PROVIDER_IDS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "azure.ai.openai": "azure",
    "aws.bedrock": "aws",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "mistral_ai": "mistral",
    "cohere": "cohere",
    "x_ai": "x-ai",
    "groq": "groq",
    "deepseek": "deepseek",
    "perplexity": "perplexity",
    "together": "together",
    "fireworks": "fireworks",
    "openrouter": "openrouter",
    "cerebras": "cerebras",
}
PROVIDERS = tuple(_PROVIDER_IDS)  # the provider names (gen_ai.provider.name) whose price lists llmtrace reads

# Price keys whose usage llmtrace never reports (other searches, tool executions, longer cache TTLs, image and
# video tokens, audio hours, document pages, characters): they contribute nothing for the usage we report,
# exactly as in genai-prices' own calculation (tests/test_core.py checks every model).
_ZERO_USAGE_KEYS = frozenset(
    {
        "social_searches_kcount",
        "code_executions_kcount",
        "rerank_searches_kcount",
        "cache_write_5m_mtok",
        "input_image_mtok",
        "output_image_mtok",
        "cache_image_read_mtok",
        "input_video_mtok",
        "output_video_mtok",
        "audio_hours",
        "input_audio_hours",
        "input_document_kpages",
        "input_annotated_document_kpages",
        "input_mchars",
        "input_text_messages_kcount",
        "output_citation_mtok",
    }
)
# Audio rates: a call with audio tokens is priced by genai-prices' exact calculation; one without, by the fast path.
_AUDIO_KEYS = frozenset({"input_audio_mtok", "output_audio_mtok", "cache_audio_read_mtok"})
_FAST_KEYS = frozenset(
    {
        "input_mtok",
        "output_mtok",
        "cache_read_mtok",
        "cache_write_mtok",
        "cache_write_1h_mtok",
        "output_reasoning_mtok",
        "requests_kcount",
        "web_searches_kcount",
        "storage_searches_kcount",
    }
)

Tiers = tuple[tuple[int, float], ...]

# What, besides the model, a call's price depends on, in genai-prices' terms: (name, value) pairs such as
# ("service_tier", "flex") for OpenAI or ("speed", "fast") for Anthropic's fast mode. A value the price list does
# not name costs the standard rates.
PriceContext = tuple[tuple[str, str], ...]
# The request arguments that name such a context (a tier or a mode asked for).
_REQUEST_CONTEXT_KEYS = ("service_tier", "speed")


@dataclass(frozen=True)
class Rate:
    """USD per token, with genai-prices' "cliff" tiers chosen by the call's total input tokens."""

    per_token: float
    tiers: Tiers = ()

    def at(self, total_input: int) -> float:
        for start, price in reversed(self.tiers):
            if total_input > start:
                return price
        return self.per_token

    def worst(self) -> float:
        return max([self.per_token, *(price for _, price in self.tiers)])


class Cost(NamedTuple):
    total: float
    input: float
    output: float
    # What prompt caching saved against paying the full input rate for the cached tokens; negative
    # when cache writes cost more than cache reads saved. 0 for calls that touched no cache.
    cache_savings: float = 0.0


# Per-token rates in this order: input, output, cache read, cache write, cache write (1 h), reasoning.
Rates = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class Price:
    model: str
    source: str
    input: Rate
    output: Rate
    cache_read: Rate
    cache_write: Rate
    reasoning: Rate
    cache_write_1h: Rate
    per_request: float = 0.0
    per_web_search: float = 0.0
    per_file_search: float = 0.0
    # Set when the model's prices use units the fast path does not model: cost then comes from
    # genai-prices' exact (slower) calculation.
    exact: Any = field(default=None, compare=False)
    # Set when the model has audio rates: calls with audio tokens take the exact calculation.
    audio_exact: Any = field(default=None, compare=False)
    # The price list's context this price was resolved in ("service_tier=priority"), for the span; "" when the
    # standard rates apply (and always for a user's override, one price for every context).
    context: str = ""
    # The rates when none depends on the input size (most models): computed once, not per call.
    _flat: Rates | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not any(rate.tiers for rate in self._rate_list()):
            object.__setattr__(self, "_flat", self._rates_at(0))

    def prices_audio(self) -> bool:
        """Whether audio tokens are priced as such: genai-prices lists audio rates for some audio models only (not
        the ``*-audio-preview`` ones), and would charge their audio tokens at text rates, several times too low; a
        user's override is one rate for every token, audio included."""
        return self.audio_exact is not None or self.source == SOURCE_OVERRIDE

    def worst_output_per_token(self) -> float:
        """The dearest rate an output token can have (budgets reserve ``max_tokens`` at it)."""
        return max(rate.worst() for rate in (self.output, self.reasoning))

    def worst_input_per_token(self) -> float:
        """The dearest rate an input token can have (a cache write costs more than a plain read)."""
        return max(rate.worst() for rate in (self.input, self.cache_write, self.cache_write_1h))

    def _rate_list(self) -> tuple[Rate, ...]:
        return (self.input, self.output, self.cache_read, self.cache_write, self.cache_write_1h, self.reasoning)

    def _rates_at(self, total_input: int) -> Rates:
        return tuple(rate.at(total_input) for rate in self._rate_list())  # type: ignore[return-value]

    def cost(self, usage: Usage) -> Cost:
        """Runs on the request path for every priced call: plain float arithmetic, one tuple built."""
        if usage.passes and self._flat is None:
            return self._cost_by_pass(usage.passes)
        inp, out, cache_read, cache_write, cache_write_1h, reasoning = self._flat or self._rates_at(usage.input_tokens)
        write_1h = usage.cache_write_1h
        write_short = usage.cache_write - write_1h
        savings = 0.0
        if usage.cache_read or usage.cache_write:
            savings = (
                usage.cache_read * (inp - cache_read)
                - write_short * (cache_write - inp)
                - write_1h * (cache_write_1h - inp)
            )
        exact = self.exact
        if exact is None and (usage.input_audio or usage.output_audio):
            exact = self.audio_exact
        if exact is not None:
            return _exact_cost(exact, usage)._replace(cache_savings=savings)
        cost_in = (
            usage.uncached_input * inp + usage.cache_read * cache_read + write_short * cache_write + write_1h * cache_write_1h
        )
        cost_out = usage.visible_output * out + usage.reasoning * reasoning
        # Like a request's fee, a search's is neither input nor output (as genai-prices counts it): in the total only.
        total = cost_in + cost_out + self.per_request
        if usage.web_searches or usage.file_searches:
            total += usage.web_searches * self.per_web_search + usage.file_searches * self.per_file_search
        return Cost(total, cost_in, cost_out, savings)

    def _cost_by_pass(self, passes: tuple[Usage, ...]) -> Cost:
        """Passes billed as calls of their own, each at the rates its own input size takes; the request's fee once."""
        costs = [self.cost(one) for one in passes]
        total, cost_in, cost_out, savings = (math.fsum(column) for column in zip(*costs))
        return Cost(total - self.per_request * (len(costs) - 1), cost_in, cost_out, savings)


_cache: dict[tuple[str, str, PriceContext], Price | None] = {}
_UNCACHED: Any = object()
# (provider, model) -> the user's price, both lower-cased; provider "": every provider's calls to that model.
_overrides: dict[tuple[str, str], Price] = {}
_warned: set[tuple[str, str, bool]] = set()
_lock = threading.Lock()
unpriced_calls = 0


def set_price(
    model: str,
    *,
    input_mtok: float,
    output_mtok: float,
    cache_read_mtok: float | None = None,
    cache_write_mtok: float | None = None,
    provider: str | None = None,
) -> tuple[tuple[str, str], Price]:
    """Price ``model`` at these USD-per-million-token rates, overriding genai-prices: for every provider's calls to a
    model of that name, or only for ``provider``'s (a span's ``gen_ai.provider.name``: ``groq``, ``openai``, a
    self-hosted server's host), which wins over an override for every provider. Returns the override as
    ``forget_prices`` takes it."""
    values = {"input_mtok": input_mtok, "output_mtok": output_mtok}
    if cache_read_mtok is not None:
        values["cache_read_mtok"] = cache_read_mtok
    if cache_write_mtok is not None:
        values["cache_write_mtok"] = cache_write_mtok
    check_rates(model, values)
    inp = Rate(values["input_mtok"] / 1e6)
    out = Rate(values["output_mtok"] / 1e6)
    cache_write = Rate(values["cache_write_mtok"] / 1e6) if "cache_write_mtok" in values else inp
    price = Price(
        model=model,
        source=SOURCE_OVERRIDE,
        input=inp,
        output=out,
        cache_read=Rate(values["cache_read_mtok"] / 1e6) if "cache_read_mtok" in values else inp,
        cache_write=cache_write,
        reasoning=out,
        cache_write_1h=cache_write,
    )
    key = ((provider or "").lower(), model.lower())
    with _lock:
        _overrides[key] = price
        _cache.clear()
    return key, price


RATE_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")  # set_price's, USD per million


def check_rates(model: str, rates: Any, where: str = "") -> None:
    """A ``ConfigError`` (a ValueError) unless ``rates`` is what set_price takes: input and output, optional cache rates, each a
    non-negative number. ``where``: what the message names before the model (a provider's table)."""
    if not isinstance(rates, Mapping):
        raise ConfigError(f"{where}prices for {model!r} must be a table of {', '.join(RATE_KEYS)}, got {rates!r}")
    unknown = sorted(set(rates) - set(RATE_KEYS))
    missing = [key for key in RATE_KEYS[:2] if key not in rates]
    if unknown or missing:
        wrong = f"unknown {', '.join(unknown)}" if unknown else f"{', '.join(missing)} missing"
        hint = ""
        if unknown and isinstance(rates[unknown[0]], Mapping):
            # TOML reads [prices.gpt-4.1] as model "gpt-4" with a table "1" in it.
            hint = (f'; in llmtrace.toml a name with dots in it is quoted, [prices."{model}.{unknown[0]}"], and one '
                    'provider\'s prices go in [provider_prices."provider"."model"]')
        raise ConfigError(
            f"{where}prices for {model!r}: {wrong} (rates: {', '.join(RATE_KEYS)}; the first two are required{hint})"
        )
    for key, value in rates.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
            raise ConfigError(f"price {key} for model {model!r} must be a non-negative number, got {value!r}")


def check_prices(prices: Mapping[str, Any], by_provider: bool = False) -> None:
    """A ``ConfigError`` (a ValueError) unless ``prices`` maps each model to rates set_price takes; ``by_provider``: each provider to such
    a table (the ``provider_prices`` setting)."""
    for name, table in prices.items():
        if not by_provider:
            check_rates(name, table)
        elif not isinstance(table, Mapping):
            raise ConfigError(f"provider_prices for {name!r} must be a table of model -> rates, got {table!r}")
        else:
            for model, rates in table.items():
                check_rates(model, rates, f"provider_prices for {name!r}: ")


Overrides = dict[tuple[str, str], Price]


def set_prices(prices: Mapping[str, Any], provider_prices: Mapping[str, Mapping[str, Any]] | None = None) -> Overrides:
    """Apply several overrides: ``{"model": {"input_mtok": 1.0, "output_mtok": 2.0, ...}}`` for every provider, and
    ``provider_prices`` ``{"provider": {"model": {...}}}`` for one provider's calls alone. Nothing is applied unless
    all are well formed. Returns them, for ``forget_prices``."""
    check_prices(prices)
    check_prices(provider_prices or {}, by_provider=True)
    applied = dict(set_price(model, **dict(values)) for model, values in prices.items())
    for provider, table in (provider_prices or {}).items():
        applied.update(set_price(model, provider=provider, **dict(values)) for model, values in table.items())
    return applied


def forget_prices(applied: Overrides) -> None:
    """Undo ``set_prices``: each of those overrides that no later one has replaced."""
    with _lock:
        for key, price in applied.items():
            if _overrides.get(key) is price:
                del _overrides[key]
        _cache.clear()


def reset_overrides() -> None:
    with _lock:
        _overrides.clear()
        _cache.clear()


def price_for(provider: str, model: str, api_url: str | None = None, context: PriceContext = ()) -> Price | None:
    """The cached price of ``model`` served by ``provider``, or None when nobody knows it.

    ``context``: how the call was served (OpenAI's ``flex`` tier costs half the standard rates, ``priority`` up
    to twice). A user's override is one price for every context."""
    key = (provider, model, context)
    try:
        return _cache[key]
    except KeyError:
        pass
    price = _override(provider, model)
    if price is None:
        price = _resolve(provider, model, api_url, context)
        if price is not None and _overrides:
            # An override of a model holds for every name the price list knows it by: a pinned snapshot
            # (gpt-4o-2024-08-06) is priced as gpt-4o, whose override then applies to it too.
            price = _override(provider, price.model) or price
    _cache[key] = price
    return price


def _override(provider: str, *models: str | None) -> Price | None:
    """The user's price for the first of ``models`` that has one: the provider's own override of any of them before
    one for every provider. Whatever the case, as the price list matches names: "my-model" prices "My-Model"."""
    names = [model.lower() for model in models if model]
    for scope in (provider.lower(), ""):
        for name in names:
            price = _overrides.get((scope, name))
            if price is not None:
                return price
    return None


def providers_pricing(model: str) -> list[str]:
    """The providers that price ``model``: first those the user gave a price of its own for it, then those whose price
    list has it as its own model, then those whose list has it from another's (Azure lists DeepSeek's and xAI's
    models): where to look when it is not the provider asked about, the likeliest first."""
    from genai_prices import data_snapshot

    names: dict[str, str] = {}
    for name, provider_id in _PROVIDER_IDS.items():
        names.setdefault(provider_id, name)
    lists = {provider.id: provider for provider in data_snapshot.get_snapshot().providers}
    overridden = [scope for scope, name in _overrides if scope and name == model.lower()]
    listed = [(provider_id, name) for provider_id, name in names.items() if price_for(name, model) is not None]
    own = [name for provider_id, name in listed if provider_id in lists and lists[provider_id].find_model(model)]
    return list(dict.fromkeys([*overridden, *own, *(name for _, name in listed)]))


def priced_context_values(key: str) -> set[str]:
    """The values of ``key`` (``service_tier``, ``speed``) that some model of the price list has prices of its own for."""
    from genai_prices import data_snapshot

    return {
        value
        for provider in data_snapshot.get_snapshot().providers
        for model in provider.models
        for variant in model.price_variants or ()
        if isinstance(value := variant.when.get(key), str)
    }


def request_context(kwargs: Mapping[str, Any]) -> PriceContext:
    """The price context a request asks for (its service tier or speed), where it names one."""
    return tuple((key, value) for key in _REQUEST_CONTEXT_KEYS if isinstance(value := kwargs.get(key), str))


def price_for_call(
    provider: str, response_model: str, request_model: str, api_url: str | None = None, context: PriceContext = ()
) -> Price | None:
    """A call's price. A user's override for the model as requested or as answered comes first: OpenAI
    answers ``gpt-4o`` with ``gpt-4o-2024-08-06``, and an override of ``gpt-4o`` must apply to it. Then the
    price list's for the model that answered, then for the one requested (some responses name an
    internal snapshot, ``davinci:2023-07-21-v2``, that no price list has); on Bedrock the other way round."""
    first, then = response_model, request_model
    if provider in _PRICED_AS_REQUESTED and request_model:
        first, then = request_model, response_model
    if _overrides:
        price = _override(provider, first, then)
        if price is not None:
            return price
    # price_for's cache, read here: one call fewer on every call.
    price = _cache.get((provider, first or then, context), _UNCACHED)
    if price is _UNCACHED:
        price = price_for(provider, first or then, api_url, context)
    if price is None and then and then != first:
        price = price_for(provider, then, api_url, context)
    return price


# Bedrock answers with the model's own name (claude-sonnet-4-5-20250929): only the request names the inference profile
# that served the call (global.anthropic.…, us.anthropic.…), and their prices differ (a regional one costs 10 % more).
_PRICED_AS_REQUESTED = frozenset({"aws.bedrock"})


def note_unpriced(provider: str, model: str, *, audio: bool = False) -> None:
    """Count an unpriced call and warn once per (provider, model) per process; ``audio``: the model has a price, but
    not for the audio tokens this call has."""
    global unpriced_calls
    with _lock:
        unpriced_calls += 1
        first = (provider, model, audio) not in _warned
        _warned.add((provider, model, audio))
    if not first:
        return
    if audio:
        logger.warning(
            "llmtrace: the price list has no audio rates for model %r (provider %r); its calls with audio tokens carry "
            "no cost (its text-only calls are priced). An override with llmtrace.pricing.set_price() or [prices] in "
            "llmtrace.toml prices every token, audio included, at its rates.",
            model,
            provider,
        )
    else:
        logger.warning(
            "llmtrace: no price known for model %r (provider %r); its calls carry no cost. "
            "Add one with llmtrace.pricing.set_price() or [prices] in llmtrace.toml.",
            model,
            provider,
        )


def _resolve(provider: str, model: str, api_url: str | None, context: PriceContext) -> Price | None:
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    provider_id = _PROVIDER_IDS.get(provider)
    try:
        if provider_id is not None:
            found, info = snapshot.find_provider_model(model, None, provider_id, None)
        elif api_url:
            found, info = snapshot.find_provider_model(model, None, None, api_url)
        else:
            return None
    except LookupError:
        return None
    # As genai-prices' own calc_price: a tier's prices are the provider's own; a model found at another provider
    # (a fallback) is priced at its standard rates.
    own_model = any(info is listed for listed in found.models)
    now = datetime.now(tz=timezone.utc)
    model_price = info.get_prices(now, dict(context) if context and own_model else None)
    # The span names the context only where it changed the rates: OpenAI answers service_tier "default" on
    # every call, and a tier the model has no prices for costs the standard ones.
    label = ""
    if context and own_model and model_price != info.get_prices(now, None):
        label = ",".join(f"{key}={value}" for key, value in context)
    return _compile(info.id, model_price, label)


def _rate(value: Any) -> Rate:
    if value is None:
        return Rate(0.0)
    if hasattr(value, "tiers"):
        tiers = tuple((int(t.start), float(t.price) / 1e6) for t in value.tiers)
        return Rate(float(value.base) / 1e6, tiers)
    return Rate(float(value) / 1e6)


def _per_thousand(value: Any) -> float:
    """USD per request or search from a price per thousand (a tiered one makes the price exact: see _compile)."""
    return float(getattr(value, "base", value) or 0) / 1000


def _compile(model_id: str, model_price: Any, context: str = "") -> Price:
    priced = {k: v for k, v in vars(model_price).items() if v is not None and not k.startswith("_")}
    unknown = set(priced) - _FAST_KEYS - _ZERO_USAGE_KEYS - _AUDIO_KEYS
    # Tiers by input size are modelled for token rates only: a tiered fee per request or search (none today)
    # takes the exact calculation.
    fees = ("requests_kcount", "web_searches_kcount", "storage_searches_kcount")
    unknown |= {key for key in fees if hasattr(priced.get(key), "tiers")}
    inp = _rate(priced.get("input_mtok"))
    out = _rate(priced.get("output_mtok"))
    cache_write = _rate(priced["cache_write_mtok"]) if "cache_write_mtok" in priced else inp
    return Price(
        model=model_id,
        source=SOURCE_GENAI_PRICES,
        input=inp,
        output=out,
        # genai-prices charges a sub-bucket at its parent's rate when it has no price of its own.
        cache_read=_rate(priced["cache_read_mtok"]) if "cache_read_mtok" in priced else inp,
        cache_write=cache_write,
        reasoning=_rate(priced["output_reasoning_mtok"]) if "output_reasoning_mtok" in priced else out,
        cache_write_1h=_rate(priced["cache_write_1h_mtok"]) if "cache_write_1h_mtok" in priced else cache_write,
        per_request=_per_thousand(priced.get("requests_kcount")),
        per_web_search=_per_thousand(priced.get("web_searches_kcount")),
        per_file_search=_per_thousand(priced.get("storage_searches_kcount")),
        exact=model_price if unknown else None,
        audio_exact=model_price if _AUDIO_KEYS & priced.keys() else None,
        context=context,
    )


def genai_usage(usage: Usage) -> Any:
    """The same usage in genai-prices' terms (totals that include their subsets)."""
    from genai_prices import Usage as GenaiUsage

    return GenaiUsage(
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.cache_read,
        cache_write_tokens=usage.cache_write,
        cache_write_1h_tokens=usage.cache_write_1h,
        output_tokens=usage.output_tokens,
        output_reasoning_tokens=usage.reasoning,
        web_searches=usage.web_searches,
        storage_searches=usage.file_searches,
        input_audio_tokens=usage.input_audio,
        output_audio_tokens=usage.output_audio,
    )


def _exact_cost(model_price: Any, usage: Usage) -> Cost:
    result = model_price.calc_price(genai_usage(usage))
    return Cost(float(result["total_price"]), float(result["input_price"]), float(result["output_price"]))
