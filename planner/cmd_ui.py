"""`clusterplan ui [--port P] [--host H] [--headless]`: start the Streamlit dashboard (ui/app.py).

The command replaces this process with `python -m streamlit run ui/app.py ...`, so Ctrl-C and
signals reach Streamlit directly. It locates ui/app.py without importing `ui` (DESIGN §2:
nothing imports ui)."""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from hwmodels.errors import InputError


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port={text!r} must be an integer 1..65535") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port={v} must be in 1..65535")
    return v


def app_path() -> Path:
    spec = importlib.util.find_spec("ui")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the ui package is not installed; run pip install -e . in the repository")
    path = Path(list(spec.submodule_search_locations)[0]) / "app.py"
    if not path.is_file():
        raise InputError(f"dashboard script {str(path)!r} not found")
    return path


def streamlit_argv(args) -> list[str]:
    argv = [sys.executable, "-m", "streamlit", "run", str(app_path()), "--server.port", str(args.port),
            "--server.address", args.host, "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "minimal"]  # no "Deploy" button on a local planner
    if args.headless:
        argv += ["--server.headless", "true"]
    return argv


def cmd_ui(args):
    if importlib.util.find_spec("streamlit") is None:
        raise InputError("streamlit is not installed; pip install 'streamlit>=1.35'")
    argv = streamlit_argv(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # does not return


def register(groups) -> None:
    p = groups["top"].add_parser("ui", help="start the Streamlit dashboard")
    p.add_argument("--port", type=_port, default=8501, help="port to serve on (default 8501)")
    p.add_argument("--host", default="localhost", help="address to bind (default localhost)")
    p.add_argument("--headless", action="store_true", help="do not open a browser")
    p.set_defaults(func=cmd_ui)
