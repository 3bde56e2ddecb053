"""The Streamlit dashboard (``app.py``), and how ``llmtrace dashboard`` / ``llmtrace demo`` start it.

Importing this package does not import Streamlit: the CLI starts the app in a process of its own.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import NoReturn

from ..store import resolve

APP = Path(__file__).with_name("app.py")
DEFAULT_PORT = 8501
DEFAULT_REFRESH_S = 10.0
ENV_REFRESH = "LLMTRACE_DASHBOARD_REFRESH"  # seconds between refreshes; 0 turns it off
ENV_TRACE_URL = "LLMTRACE_TRACE_URL"  # e.g. http://localhost:16686/trace/{trace_id}


# The oldest Streamlit the dashboard works with: pyproject's [dashboard] extra says the same (a test checks).
MIN_STREAMLIT = (1, 55)


class DashboardUnavailable(RuntimeError):
    """Streamlit is not installed or too old, or the server did not come up."""


def check_streamlit() -> None:
    """Raise DashboardUnavailable, saying what to install, unless a Streamlit the dashboard works with is."""
    if importlib.util.find_spec("streamlit") is None:
        raise DashboardUnavailable("the dashboard needs Streamlit: pip install 'llmtrace[dashboard]'")
    found = importlib.metadata.version("streamlit")
    release = re.match(r"(\d+)\.(\d+)", found)
    if release is None or tuple(map(int, release.groups())) < MIN_STREAMLIT:
        needed = ".".join(map(str, MIN_STREAMLIT))
        # An older one starts, then fails on every page: say so before it is started.
        raise DashboardUnavailable(f"the dashboard needs Streamlit {needed} or newer, not {found}: "
                                   "pip install -U 'llmtrace[dashboard]'")  # fmt: skip


def check_can_serve(host: str, port: int) -> None:
    """Raise DashboardUnavailable unless Streamlit is usable and ``host:port`` is free: a demo says so before its
    traffic, not after it."""
    check_streamlit()
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a closing port is free
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise DashboardUnavailable(f"cannot serve the dashboard on {host}:{port} ({exc.strerror}): "
                                       "choose another with --port") from None  # fmt: skip


def command(host: str, port: int) -> list[str]:
    check_streamlit()
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",  # no e-mail prompt, no browser opened by Streamlit itself
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",  # offline machines; and nobody asked for telemetry
        "--theme.base", "light",
        "--client.toolbarMode", "minimal",  # no "Deploy" button: this is a local tool
    ]  # fmt: skip


def _environment(db: str | None, refresh_s: float | None, config_file: str | None) -> dict[str, str]:
    env = {**os.environ, "LLMTRACE_DB": str(resolve(db).db)}
    if refresh_s is not None:
        env[ENV_REFRESH] = str(refresh_s)
    if config_file is not None:
        env["LLMTRACE_CONFIG"] = str(Path(config_file).absolute())
    return env


def start(
    db: str | None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    refresh_s: float | None = None,
    config_file: str | None = None,
) -> subprocess.Popen[bytes]:
    """The dashboard as a child process, reading the store at ``db`` (default: the usual store)."""
    return subprocess.Popen(command(host, port), env=_environment(db, refresh_s, config_file))


def replace_process(
    db: str | None, host: str, port: int, refresh_s: float | None = None, config_file: str | None = None
) -> NoReturn:
    """Become the dashboard server: signals (Ctrl-C, SIGTERM from a supervisor) reach Streamlit itself,
    so stopping ``llmtrace dashboard`` can never leave an orphaned server holding the port."""
    args = command(host, port)
    os.execve(args[0], args, _environment(db, refresh_s, config_file))


def wait_until_up(process: subprocess.Popen[bytes], url: str, timeout_s: float = 60.0) -> None:
    """Return once Streamlit answers its health check; raise if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DashboardUnavailable(f"the dashboard exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise DashboardUnavailable(f"the dashboard did not answer at {url} within {timeout_s:.0f} s")


def open_in_browser(url: str) -> None:
    """Open the page where there is a screen to show it; on a server, printing the URL is enough."""
    if sys.platform in ("darwin", "win32") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        import webbrowser

        webbrowser.open(url)
