"""`clusterplan ui [--port P] [--host H] [--headless]`: start the Streamlit dashboard (ui/app.py).

The command replaces this process with `python -m streamlit run ui/app.py ...`, so Ctrl-C and
signals reach Streamlit directly."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from hwmodels.errors import InputError
from ui.cli import flags

APP = Path(__file__).resolve().parents[1] / "app.py"


def streamlit_argv(args) -> list[str]:
    argv = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(args.port),
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
    p.add_argument("--port", type=flags.integer("--port", 1, 65535), default=8501,
                   help="port to serve on (default 8501)")
    p.add_argument("--host", default="localhost", help="address to bind (default localhost)")
    p.add_argument("--headless", action="store_true", help="do not open a browser")
    p.set_defaults(func=cmd_ui)
