"""``instrument()`` / ``uninstrument()``: patch the SDKs (now or when imported) and set up export."""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import importlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
import weakref
from typing import Any

import wrapt
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from . import call as core
from . import budgets, config, export, later, pricing
from ._fork import background_work
from ._guard import internal_errors
from ._version import __version__
from .alerts import Alerter, Webhook
from .enforce import SpendGuard
from .metrics import Instruments
from .monitor import Monitor
from .store.files import request_hash_key
from .store.writer import is_llm_span
from .providers import PROVIDERS
from .spans import CallSpans
from .stream import end_collected, end_open_streams
from .wrappers import wrapper_for

logger = logging.getLogger("llmtrace")

_lock = threading.Lock()
# (owner object, attribute name, original value) for every patch in place, to undo them.
_patches: list[tuple[Any, str, Any]] = []
_patched_sdks: set[str] = set()
_hooks_registered: set[str] = set()
_store_writer: Any = None  # the StoreWriter in use since instrument()
_monitor: Any = None  # the budgets-and-anomalies Monitor in use since instrument()
_settings_prices: pricing.Overrides = {}  # the prices its settings gave, undone by uninstrument()
# Tracer provider -> the StoreWriter llmtrace added to it, reused by a later instrument().
_writers_by_provider: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
# The tracer and meter providers llmtrace made (none of the app's was there), still its own in a later instrument().
_providers_made: weakref.WeakSet[Any] = weakref.WeakSet()
# Tracer provider -> llmtrace's OTLP export on it, emptied by uninstrument() and refilled by a later instrument().
_otlp_by_provider: weakref.WeakKeyDictionary[Any, OtlpExport] = weakref.WeakKeyDictionary()


class OtlpExport(SpanProcessor):
    """llmtrace's OTLP span export on one provider. An SDK provider cannot drop a processor, so this one stays
    and what it exports through is swapped: by ``uninstrument()`` (none) and a later ``instrument()`` (where that
    one says), never a second exporter beside the first. The batch processor's waits are bounded here (see
    ``export.in_background``): a flush by its timeout, a shutdown by the ``otlp_shutdown_timeout`` setting."""

    def __init__(self, only_llm_spans: bool) -> None:
        self.batch: BatchSpanProcessor | None = None
        self.shutdown_timeout = config.Settings.otlp_shutdown_timeout
        self._flush: threading.Event | None = None  # set once the flush running on its own thread is done
        # On the app's own provider, which exports the app's spans where the app says: llmtrace's endpoint gets
        # llmtrace's spans, never the app's (a second copy of them, perhaps to another backend).
        self.only_llm_spans = only_llm_spans

    # No on_start: a batch processor does nothing there (and llmtrace's direct spans need processors that don't).
    def on_end(self, span: Any) -> None:
        batch = self.batch
        if batch is not None and (not self.only_llm_spans or is_llm_span(span)):
            batch.on_end(span)

    def replace(self, batch: BatchSpanProcessor | None, shutdown_timeout: float) -> None:
        stopping = self.stop()
        if stopping is not None:
            export.wait_for_shutdowns({"spans": stopping}, self.shutdown_timeout)
        self.batch, self.shutdown_timeout = batch, shutdown_timeout

    def stop(self) -> threading.Event | None:
        """Stop exporting; the old batch processor's shutdown (it sends what it holds) runs on, set when done."""
        old, self.batch = self.batch, None
        return export.in_background(old.shutdown, "spans-shutdown") if old is not None else None

    def shutdown(self) -> None:
        self.replace(None, self.shutdown_timeout)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        batch = self.batch
        if batch is None:
            return True
        flush = self._flush
        if flush is None or flush.is_set():  # a flush still running sends what came since too: none piles up behind it
            flush = self._flush = export.in_background(batch.force_flush, "spans-flush")
        return flush.wait(timeout_millis / 1000)


# A meter provider llmtrace made (it exports metrics over OTLP), and how long exit waits for its last export.
_own_meters: tuple[MeterProvider, float] | None = None
_own_metric_export: export.SwappedMetricExporter | None = None  # that provider's exporter, kept across uninstrument()


def instrument(**options: Any) -> None:
    """Trace every OpenAI and Anthropic call of this process. Safe to call more than once.

    Options: the fields of ``llmtrace.config.Settings``, each also ``LLMTRACE_<NAME>`` or a key in ``llmtrace.toml``
    (the README's Options table): ``service_name``, ``otlp_endpoint``, ``otlp_protocol``, ``otlp_shutdown_timeout``,
    ``capture_content``, ``include_usage_hosts``, ``provider_hosts``, ``metric_tag_allowlist``, ``metric_tag_top_k``,
    ``disable_sdk_tracing``, ``prices``, ``provider_prices``, ``config_file`` (the file itself: ``LLMTRACE_CONFIG``),
    ``store``, ``db``, ``flush_interval``, ``retention_days``, ``max_buffered_spans``, ``budget_refresh_interval``,
    ``alert_webhook_url``, ``alert_webhook_timeout`` and the ``anomaly_*`` thresholds. Code-only: ``tracer_provider``,
    ``meter_provider``. A malformed setting raises ``llmtrace.ConfigError`` and nothing is applied.
    """
    global _store_writer, _monitor, _settings_prices
    tracer_provider = options.pop("tracer_provider", None)
    meter_provider = options.pop("meter_provider", None)
    settings = config.load(options)
    # A malformed budget fails here too, before anything is applied.
    file_budgets = budgets.load_file(settings.config_file) if settings.config_file else []
    if settings.store:  # a store path DuckDB cannot use fails here, before anything is applied
        from .store import resolve

        resolve(settings.db)
    otlp = export.destinations(settings)
    # A bad protocol for a signal exported fails here, before anything is applied.
    for signal in (["TRACES"] if otlp.traces else []) + (["METRICS"] if otlp.metrics else []):
        export.protocol_for(signal, settings)
    with _lock:
        if core.runtime is not None:
            _say_already_instrumented(core.runtime.settings, settings)
            return
        _flush_at_multiprocessing_child_exit()
        with internal_errors():
            _flush_on_sigterm()
        if "celery" not in _hooks_registered:  # now, or whenever the app imports Celery (and uvicorn)
            _hooks_registered.add("celery")
            wrapt.register_post_import_hook(_flush_celery_pool_children, "celery")
            wrapt.register_post_import_hook(_flush_after_uvicorn_shutdown, "uvicorn.server")
        # The settings' prices hold while it is instrumented: the next instrument() prices as its own settings say.
        _settings_prices = pricing.set_prices(settings.prices, settings.provider_prices)
        apps_own = _apps_own(tracer_provider, trace.get_tracer_provider(), TracerProvider) or _apps_own(
            meter_provider, metrics.get_meter_provider(), MeterProvider
        )
        tracer_provider = _tracer_provider(tracer_provider, settings, otlp)
        _store_writer = _attach_store(tracer_provider, settings) if settings.store else None
        instruments = _instruments(meter_provider, settings, otlp)
        # Last registered, so first to run at exit (atexit runs hooks in reverse order), before the store's own and
        # those of the SDK's providers made just now (theirs would wait out a dead collector's retries).
        atexit.unregister(_stop_otlp_export)
        atexit.register(_stop_otlp_export)
        atexit.unregister(_end_streams)
        atexit.register(_end_streams)
        atexit.unregister(_exiting.set)
        atexit.register(_exiting.set)
        if not apps_own:
            export.quiet_repeated_export_errors(store_on=_store_writer is not None)
        tracer = tracer_provider.get_tracer("llmtrace", __version__)
        guard = hasher = None
        if _store_writer is not None:
            guard = SpendGuard()
            _monitor = _start_monitor(settings, _store_writer, file_budgets, guard)
            if "duplicate_calls" in settings.anomaly_detectors:
                hasher = hashlib.blake2b(key=request_hash_key(_store_writer.paths), digest_size=8)
        else:
            if file_budgets or budgets.declared():
                logger.warning(_BUDGETS_NEED_THE_STORE)
            budgets.on_change(_budgets_declared_without_store)  # and of budgets declared in code later
        core.runtime = core.Runtime(
            spans=CallSpans(tracer), settings=settings, instruments=instruments, ledger=_store_writer, guard=guard,
            request_hasher=hasher,
        )  # fmt: skip
        for sdk in PROVIDERS:
            if sdk not in _hooks_registered:
                _hooks_registered.add(sdk)
                wrapt.register_post_import_hook(_patch_sdk, sdk)
            elif sdk not in _patched_sdks:
                module = sys.modules.get(sdk)
                if module is not None:
                    _patch_sdk(module)
    with internal_errors():
        # Imported here, not in the thread below: it imports httpx2, which openai 2.x looks up in sys.modules
        # on every request; a half-imported httpx2 seen from the app's thread would break the app's call.
        import genai_prices  # noqa: F401
    threading.Thread(target=_warm_prices, name="llmtrace-warm-prices", daemon=True).start()


def _say_already_instrumented(in_force: config.Settings, asked: config.Settings) -> None:
    differing = [f for f in config.Settings.__dataclass_fields__ if getattr(in_force, f) != getattr(asked, f)]
    if differing:
        logger.warning(
            "llmtrace: already instrumented, so this instrument() call changes nothing; settings it asks for that "
            "differ from those in force: %s. Call llmtrace.uninstrument() first to change them", ", ".join(differing)
        )
    else:
        logger.debug("llmtrace: already instrumented; instrument() again does nothing")


def uninstrument() -> None:
    """Restore every patched SDK method and stop tracing (OTLP export included; the spans held are sent first)."""
    with _lock:
        core.runtime = None
        global _store_writer, _monitor, _settings_prices
        for otlp in list(_otlp_by_provider.values()):
            otlp.shutdown()
        _stop_own_metric_export()
        if _monitor is not None:
            _monitor.stop()
            _monitor = None
        budgets.on_change(None)
        pricing.forget_prices(_settings_prices)
        _settings_prices = {}
        if _store_writer is not None:
            _store_writer.shutdown()  # flushes; it stays on the provider, stopped, for a later instrument()
            _store_writer = None
        while _patches:
            owner, attribute, original = _patches.pop()
            setattr(owner, attribute, original)
        _patched_sdks.clear()
        later.forget()  # answers to calls made while instrumented are no longer watched for
        with internal_errors():
            _restore_sigterm()


def _patch_sdk(module: Any) -> None:
    sdk = module.__name__
    if core.runtime is None or sdk in _patched_sdks:
        return
    _patched_sdks.add(sdk)
    adapter = importlib.import_module(PROVIDERS[sdk])
    for target in adapter.TARGETS:
        try:
            target_module = importlib.import_module(target.module)
            owner, attribute, original = wrapt.resolve_path(target_module, target.name)
        except (ImportError, AttributeError):
            # An older or newer SDK without this method: nothing to patch there.
            logger.debug("llmtrace: %s.%s not found; not patched", target.module, target.name)
            continue
        with internal_errors():
            wrapper = wrapper_for(target)
            if isinstance(original, property):  # its getter is wrapped: the getter gets the instance as args[0]
                patched: Any = property(wrapt.FunctionWrapper(original.fget, wrapper))
            else:
                patched = wrapt.FunctionWrapper(original, wrapper)
            wrapt.apply_patch(owner, attribute, patched)
            _patches.append((owner, attribute, original))


def _attach_otlp(provider: Any, settings: config.Settings, own_provider: bool, otlp: export.Destinations) -> None:
    """OTLP span export (the store writer is ``_attach_store``'s).

    OTLP goes from a provider llmtrace made itself whenever an endpoint is configured; from the app's own
    provider only when llmtrace's own ``otlp_endpoint`` setting names one: the app's provider exports its
    spans where the standard variables say already.
    """
    wanted = otlp.traces and (own_provider or otlp.base_url)
    slot = _otlp_by_provider.get(provider)
    if slot is None:
        if not wanted:
            return
        slot = _otlp_by_provider[provider] = OtlpExport(only_llm_spans=not own_provider)
        provider.add_span_processor(slot)
    batch = BatchSpanProcessor(export.span_exporter(settings, otlp.base_url)) if wanted else None
    slot.replace(batch, settings.otlp_shutdown_timeout)


def _attach_store(provider: Any, settings: config.Settings) -> Any:
    """The provider's store writer: the one a previous instrument() added (restarted), or a new one."""
    from .store import StoreWriter, resolve

    paths = resolve(settings.db)
    retention = settings.retention_days or None
    writer = _writers_by_provider.get(provider)
    if writer is not None and writer.paths == paths:
        writer.restart(flush_interval=settings.flush_interval, retention_days=retention,
                       max_buffered=settings.max_buffered_spans)
    else:
        writer = StoreWriter(paths, flush_interval=settings.flush_interval, retention_days=retention,
                             max_buffered=settings.max_buffered_spans)
        provider.add_span_processor(writer)
        _writers_by_provider[provider] = writer
    return writer


_BUDGETS_NEED_THE_STORE = "llmtrace: budgets need the store (store=false): they are neither enforced nor alerted on"


def _budgets_declared_without_store() -> None:
    if budgets.declared():  # not for clear()
        logger.warning(_BUDGETS_NEED_THE_STORE)


def _start_monitor(settings: config.Settings, writer: Any, file_budgets: list[Any], guard: SpendGuard) -> Monitor:
    """Budgets and anomalies, off the request path; the first budget read happens now, so that
    ``block`` budgets hold from the first call."""
    webhook = Webhook(settings.alert_webhook_url, timeout=settings.alert_webhook_timeout) if settings.alert_webhook_url else None
    monitor = Monitor(settings, writer, Alerter(writer.paths, webhook), file_budgets, guard)
    if monitor.budgets:
        monitor.first_round()
    monitor.start()
    return monitor


def _stop_monitor_at_exit() -> None:
    # Before the store writers' own exit flush: a thread killed inside DuckDB at exit aborts the process.
    monitor = _monitor
    if monitor is not None:
        monitor.stop()


def _apps_own(given: Any, global_provider: Any, sdk_class: type) -> bool:
    """The app set up (or passed) a provider of its own: it may export through it."""
    return given is not None or (isinstance(global_provider, sdk_class) and global_provider not in _providers_made)


def _tracer_provider(given: Any, settings: config.Settings, otlp: export.Destinations) -> Any:
    provider = given if given is not None else trace.get_tracer_provider()
    if not hasattr(provider, "add_span_processor"):
        # No SDK provider yet: make one and install it globally, as the app would have.
        provider = TracerProvider(resource=_resource(settings))
        trace.set_tracer_provider(provider)
        _providers_made.add(provider)
    elif provider in _providers_made and settings.service_name:
        made_as = getattr(provider, "resource", Resource.get_empty()).attributes.get(SERVICE_NAME)
        if made_as != settings.service_name:
            logger.warning(
                "llmtrace: service_name %r not applied: the tracer provider an earlier instrument() made keeps %r (an "
                "OpenTelemetry provider's resource is fixed when it is made, and it stays the process's global one)",
                settings.service_name, made_as,
            )  # fmt: skip
    _attach_otlp(provider, settings, provider in _providers_made, otlp)
    return provider


def _instruments(given: Any, settings: config.Settings, otlp: export.Destinations) -> Instruments | None:
    global _own_meters, _own_metric_export, _meters_resource
    provider = given if given is not None else metrics.get_meter_provider()
    if given is None and provider in _providers_made and _meters_of_this_process is not None:
        provider = _meters_of_this_process  # a forked child's own, not the global one it inherited
    if given is None and not isinstance(provider, MeterProvider):
        if not otlp.metrics:
            # No SDK meter provider and nowhere to send metrics: a no-op meter would only cost time.
            return None
        # Metrics go where the spans go: a provider of llmtrace's own, installed globally.
        _own_metric_export = export.SwappedMetricExporter(export.metric_exporter(settings, otlp.base_url))
        _meters_resource = _resource(settings)
        provider = _meter_provider(_own_metric_export, _meters_resource)
        metrics.set_meter_provider(provider)
        _providers_made.add(provider)
    elif provider in _providers_made and _own_metric_export is not None:  # made by an earlier instrument()
        _own_metric_export.swap(export.metric_exporter(settings, otlp.base_url) if otlp.metrics else None)
        if not otlp.metrics:
            return None
    if isinstance(provider, MeterProvider) and provider in _providers_made:
        _own_meters = (provider, settings.otlp_shutdown_timeout)
    meter = provider.get_meter("llmtrace", __version__)
    return Instruments(meter, settings.metric_tag_allowlist, settings.metric_tag_top_k)


def _resource(settings: config.Settings) -> Resource:
    return Resource.create({SERVICE_NAME: settings.service_name} if settings.service_name else {})


def _meter_provider(exporter: export.SwappedMetricExporter, resource: Resource, forked: bool = False) -> MeterProvider:
    """The meter provider llmtrace makes where the app has none. Its resource names the process (a
    ``service.instance.id`` of its own, which newer SDKs make once a process and a forked child would share, unless
    the app's resource variables give one): a backend then keeps each process's cumulative totals apart, not one
    series that several processes (workers of one server) overwrite."""
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    instance = "service.instance.id"
    if instance not in resource.attributes or (forked and instance + "=" not in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")):
        resource = resource.merge(Resource({instance: str(uuid.uuid4())}))
    # Shut down by llmtrace's exit hook, which bounds the wait (the SDK's own would wait out a dead collector).
    return MeterProvider(metric_readers=[PeriodicExportingMetricReader(exporter)], resource=resource, shutdown_on_exit=False)


# In a forked child, the meter provider llmtrace made there (the global one, inherited, is the parent's): see below.
_meters_of_this_process: MeterProvider | None = None
# The resource of the one llmtrace made, before its instance id: a child's is made from it (Resource.create would run
# the resource detectors on a thread pool, which a child at fork time must not use).
_meters_resource: Resource | None = None


def _own_metrics_in_child() -> None:
    """A forked child of an instrumented process whose metrics go through the meter provider llmtrace made: that
    provider holds the parent's totals, which the child would export again as its own (calls and cost counted
    twice) under the parent's identity. The child records on a provider of its own, with an instance id of its own;
    the inherited one exports nothing more from here (metrics an app recorded on it too, as the global provider,
    stop in the child with it)."""
    global _own_meters, _own_metric_export, _meters_of_this_process
    runtime = core.runtime
    resource = _meters_resource
    if _own_meters is None or _own_metric_export is None or runtime is None or runtime.instruments is None or resource is None:
        return
    with internal_errors():
        exporter = _own_metric_export.hand_over()
        if exporter is None:
            return
        settings = runtime.settings
        _meters_of_this_process = provider = _meter_provider(exporter, resource, forked=True)
        _providers_made.add(provider)
        _own_meters, _own_metric_export = (provider, _own_meters[1]), exporter
        meter = provider.get_meter("llmtrace", __version__)
        core.runtime = dataclasses.replace(runtime, instruments=Instruments(meter, settings.metric_tag_allowlist, settings.metric_tag_top_k))


def _warm_prices() -> None:
    # genai-prices loads its data (~0.3 s) on first use: do it now, off the request path.
    with internal_errors(), background_work():
        import genai_prices.data  # noqa: F401


# Set once the process has begun to exit (atexit, or one of the flushes below): a SIGTERM then leaves it to finish.
_exiting = threading.Event()


def _flush_before_abrupt_exit() -> None:
    """What exit does (the monitor stopped, spans written and exported, metrics sent), for a process that ends
    without running its atexit hooks."""
    _exiting.set()
    _stop_monitor_at_exit()
    _end_streams()
    writer = _store_writer
    if writer is not None:
        writer.shutdown()  # first: the ledger is local, and a dead collector must not leave it no time
    _stop_otlp_export()
    with internal_errors():
        provider = trace.get_tracer_provider()
        if isinstance(provider, TracerProvider):
            provider.force_flush()  # the app's own processors
        meters = metrics.get_meter_provider()
        if isinstance(meters, MeterProvider) and meters not in _providers_made:
            meters.force_flush()


def _end_streams() -> None:
    """At exit, before the store and the exporters stop: the streams the app still holds, and those the garbage
    collector handed to the ender thread, end here."""
    end_open_streams()
    end_collected()


def _stop_own_metric_export() -> None:
    """uninstrument(): the metric points so far go where they went, then llmtrace's provider exports nowhere (waited
    for ``otlp_shutdown_timeout`` at most)."""
    global _own_meters
    if _own_meters is None or _own_metric_export is None:
        return
    (meters, wait), _own_meters = _own_meters, None
    metric_export = _own_metric_export

    def flush_then_stop() -> None:
        meters.force_flush()
        metric_export.swap(None)

    export.wait_for_shutdowns({"metrics": export.in_background(flush_then_stop, "metrics-shutdown")}, wait)


def _stop_otlp_export() -> None:
    """At exit: llmtrace's OTLP export of spans and metrics sends what it holds, all at once, waited for
    ``otlp_shutdown_timeout`` at most."""
    global _own_meters
    with internal_errors():
        stopping: list[tuple[str, threading.Event, float]] = []
        for otlp in list(_otlp_by_provider.values()):
            done = otlp.stop()
            if done is not None:
                stopping.append(("spans", done, otlp.shutdown_timeout))
        if _own_meters is not None:
            meters, wait = _own_meters
            _own_meters = None
            stopping.append(("metrics", export.in_background(meters.shutdown, "metrics-shutdown"), wait))
        if stopping:
            export.wait_for_shutdowns({what: done for what, done, _ in stopping}, max(wait for _, _, wait in stopping))


# How long a SIGTERM waits for that flush: docker stop gives 10 s before SIGKILL (Kubernetes 30 s).
_SIGTERM_FLUSH_TIMEOUT_S = 8.0


def _flush_on_sigterm() -> None:
    """SIGTERM's default action ends the process without atexit hooks, so the last flush interval of spans,
    metrics and alerts was lost: docker stop, Kubernetes and systemd stop services with it, and uvicorn raises it
    again after its graceful shutdown. Where SIGTERM still has its default action, llmtrace's handler flushes
    first, then lets the default action end the process as it would have (the same signal, the same status).
    A handler the app installs (before or after) is never replaced; only the main thread can install one."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: Any) -> None:
    if _exiting.is_set():
        # Already exiting and flushing (a multiprocessing pool's worker told to stop as it ends, a second SIGTERM):
        # the interrupted flush finishes, then the process ends as it was going to.
        return
    # On a thread of its own, waited for a bounded time: the signal may have stopped the main thread inside a
    # lock the flush needs.
    flush = threading.Thread(target=_flush_before_abrupt_exit, name="llmtrace-sigterm-flush", daemon=True)
    flush.start()
    flush.join(_SIGTERM_FLUSH_TIMEOUT_S)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.raise_signal(signal.SIGTERM)


def _flush_celery_pool_children(celery: Any) -> None:
    """Celery's prefork pool ends each child with ``os._exit()`` (at shutdown, and whenever it recycles one:
    ``max_tasks_per_child``, ``max_memory_per_child``), past atexit and multiprocessing's finalizers alike: Celery's
    ``worker_process_shutdown`` signal, sent in the child just before, is the last moment to flush."""
    with internal_errors():
        from celery.signals import worker_process_shutdown

        worker_process_shutdown.connect(_on_celery_child_exit, weak=False, dispatch_uid="llmtrace-flush")


def _on_celery_child_exit(**_: Any) -> None:
    _flush_before_abrupt_exit()


def _flush_after_uvicorn_shutdown(uvicorn_server: Any) -> None:
    """uvicorn with ``--workers`` or ``--reload`` imports the app (and so runs ``instrument()``) with its own SIGTERM
    handler in place, so llmtrace's is not installed; after its graceful shutdown it puts back the default action and
    raises SIGTERM again, which ends the worker without atexit hooks. Its server's shutdown is the last moment to
    write the worker's spans."""
    with internal_errors():
        wrapt.wrap_function_wrapper(uvicorn_server, "Server.shutdown", _after_server_shutdown)


async def _after_server_shutdown(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return await wrapped(*args, **kwargs)
    finally:
        if core.runtime is not None:
            flush(_SIGTERM_FLUSH_TIMEOUT_S)  # blocks the event loop a moment: it has stopped serving


def store_in_use() -> Any:
    """The store (its ``StorePaths``) this process writes to, or None when not instrumented or the store is off."""
    writer = _store_writer
    return writer.paths if writer is not None else None


def flush(timeout_s: float = 10.0) -> bool:
    """Write every LLM call made so far to the store (as segments, which every reader sees at once) and send what
    llmtrace's OTLP export holds (spans and metrics), waiting ``timeout_s`` at most; True when all of it was done in
    time. Tracing goes on. For a process that ends without exit hooks (``os._exit()``) and for a point where the app
    wants its calls on record. The app's own span processors are its own to flush. Never raises."""
    def left_ms() -> int:
        return max(0, int((deadline - time.monotonic()) * 1000))

    done = finished = False
    with internal_errors():
        deadline = time.monotonic() + timeout_s
        end_collected()
        writer = _store_writer
        done = writer.force_flush(left_ms(), merge=False) if writer is not None else True
        for otlp in list(_otlp_by_provider.values()):
            done = otlp.force_flush(left_ms()) and done
        if _own_meters is not None:
            try:
                done = _own_meters[0].force_flush(left_ms()) and done
            except Exception:  # noqa: BLE001 - the SDK's way of saying a reader failed or timed out (a collector down)
                done = False  # it raises a bare Exception naming them (a MetricsTimeoutError inside)
        finished = True
    return finished and done  # an internal error on the way: not known to be done


def _restore_sigterm() -> None:
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


_child_exit_hooked = False


def _flush_at_multiprocessing_child_exit() -> None:
    """A ``multiprocessing`` child started by fork or forkserver ends with ``os._exit()``: no atexit hook runs
    there (llmtrace's, the SDK's), only multiprocessing's own finalizers, which each new child registers anew:
    for children forked after this, and for this process when it is such a child already (``instrument()`` in a
    ``Process`` target or a pool's initializer). (Celery's billiard pool workers call ``os._exit()`` before even
    those.)"""
    global _child_exit_hooked
    if _child_exit_hooked:
        return
    _child_exit_hooked = True
    import multiprocessing
    import multiprocessing.util as mp_util

    def in_new_child(_: object) -> None:
        mp_util.Finalize(None, _flush_before_abrupt_exit, exitpriority=100)

    # Called in each child with its first argument, held weakly: this module's function lives as long as it.
    mp_util.register_after_fork(_flush_before_abrupt_exit, in_new_child)
    if multiprocessing.parent_process() is not None:
        in_new_child(None)


def _restart_monitor_in_child() -> None:
    monitor = _monitor
    if monitor is not None:
        with internal_errors():
            monitor.after_fork_in_child()


atexit.register(_stop_monitor_at_exit)
atexit.register(end_collected)  # before the store writers' exit flush (atexit runs the last registered first)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_monitor_in_child)
    os.register_at_fork(after_in_child=_own_metrics_in_child)
