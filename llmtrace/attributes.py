"""Every span, metric and baggage key llmtrace writes, in one place.

GenAI names are copied from the OpenTelemetry GenAI semantic conventions (v1.41-era names, which the
Python semconv package and the contrib instrumentations emit); `llmtrace.*` covers what they lack.
The store's columns are derived from these strings, so they are owned here rather than imported from
the frozen `opentelemetry.semconv._incubating` package.
"""

from __future__ import annotations

# --- request / identity --------------------------------------------------------------------------
OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_TOP_P = "gen_ai.request.top_p"
REQUEST_TOP_K = "gen_ai.request.top_k"
REQUEST_STOP_SEQUENCES = "gen_ai.request.stop_sequences"
REQUEST_FREQUENCY_PENALTY = "gen_ai.request.frequency_penalty"
REQUEST_PRESENCE_PENALTY = "gen_ai.request.presence_penalty"
REQUEST_SEED = "gen_ai.request.seed"
REQUEST_CHOICE_COUNT = "gen_ai.request.choice.count"
REQUEST_STREAM = "gen_ai.request.stream"
REQUEST_ENCODING_FORMATS = "gen_ai.request.encoding_formats"
EMBEDDINGS_DIMENSION_COUNT = "gen_ai.embeddings.dimension.count"
OUTPUT_TYPE = "gen_ai.output.type"  # text or json: the form the request asks the answer in
OPENAI_REQUEST_SERVICE_TIER = "openai.request.service_tier"
OPENAI_API_TYPE = "openai.api.type"  # chat_completions or responses
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
# A keyed hash of model + messages (never the text): finds the same request sent again.
REQUEST_HASH = "llmtrace.request.hash"

# --- response ------------------------------------------------------------------------------------
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
OPENAI_RESPONSE_SERVICE_TIER = "openai.response.service_tier"
OPENAI_RESPONSE_SYSTEM_FINGERPRINT = "openai.response.system_fingerprint"
# On the span of a generation whose answer was read after its call returned (an OpenAI background response).
BACKGROUND_GENERATION = "llmtrace.response.background"

# --- usage (semconv totals; cache_read and reasoning are subsets of input and output) -------------
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
USAGE_CACHE_CREATION_INPUT_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
USAGE_SOURCE = "llmtrace.usage.source"
# Disjoint buckets: these five add up to input + output.
USAGE_UNCACHED_INPUT_TOKENS = "llmtrace.usage.uncached_input_tokens"
USAGE_VISIBLE_OUTPUT_TOKENS = "llmtrace.usage.visible_output_tokens"
USAGE_INPUT_AUDIO_TOKENS = "llmtrace.usage.input_audio_tokens"  # the part of the input that is audio
USAGE_OUTPUT_AUDIO_TOKENS = "llmtrace.usage.output_audio_tokens"  # the part of the output that is audio
USAGE_WEB_SEARCHES = "llmtrace.usage.web_searches"  # searches the provider's server-side web search tool ran
USAGE_FILE_SEARCHES = "llmtrace.usage.file_searches"  # calls of the provider's hosted file (vector store) search

# --- cost ----------------------------------------------------------------------------------------
COST_USD = "llmtrace.cost.usd"
COST_INPUT_USD = "llmtrace.cost.input_usd"
COST_OUTPUT_USD = "llmtrace.cost.output_usd"
COST_SOURCE = "llmtrace.cost.source"
COST_UNPRICED = "llmtrace.cost.unpriced"
COST_PRICED_MODEL = "llmtrace.cost.priced_model"
# How the call was served, where its price depends on it: "service_tier=priority", "speed=fast" (comma-separated).
COST_PRICE_CONTEXT = "llmtrace.cost.price_context"
# Set only on calls that read or wrote a prompt cache: USD saved against the full input rate.
COST_CACHE_SAVINGS_USD = "llmtrace.cost.cache_savings_usd"

# --- errors and transport ------------------------------------------------------------------------
ERROR_TYPE = "error.type"
HTTP_STATUS_CODE = "http.response.status_code"
HTTP_ATTEMPTS = "llmtrace.http.attempts"
HTTP_RATE_LIMITED = "llmtrace.http.rate_limited"  # 429 answers seen, retried ones included

# --- tags ----------------------------------------------------------------------------------------
USER_ID = "user.id"
TENANT = "llmtrace.tenant"
FEATURE = "llmtrace.feature"
CONVERSATION_ID = "gen_ai.conversation.id"
TAG_PREFIX = "llmtrace.tag."

# --- content (opt-in) ----------------------------------------------------------------------------
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
TOOL_DEFINITIONS = "gen_ai.tool.definitions"

# --- metrics -------------------------------------------------------------------------------------
METRIC_TOKEN_USAGE = "gen_ai.client.token.usage"
METRIC_OPERATION_DURATION = "gen_ai.client.operation.duration"
METRIC_TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
METRIC_COST = "llmtrace.cost"
METRIC_UNPRICED_CALLS = "llmtrace.cost.unpriced_calls"
TOKEN_TYPE = "gen_ai.token.type"
OTHER_BUCKET = "__other__"

# --- values --------------------------------------------------------------------------------------
OP_CHAT = "chat"
OP_TEXT_COMPLETION = "text_completion"
OP_EMBEDDINGS = "embeddings"
SOURCE_PROVIDER = "provider"
SOURCE_ESTIMATED = "estimated"
SOURCE_NONE = "none"
