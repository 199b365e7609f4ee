"""``pitune dashboard``: start the Streamlit dashboard on a study.

Execs ``streamlit run dashboard/app.py`` bound to 127.0.0.1 by default (a warning is printed when
binding elsewhere: the dashboard can launch training runs and has no authentication), headless and
without usage statistics. The study and the run registry reach the app through the environment
variables ``PITUNE_STUDY`` and ``PITUNE_RUNS_DB`` (absolute paths).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pitune_core.paths import DASHBOARD_APP as APP, REPO_ROOT as REPO, default_runs_db, default_study
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def streamlit_command(host: str = "127.0.0.1", port: int = 8501) -> list[str]:
    """The argv that starts the dashboard (``python -m streamlit run …``); the server accepts no
    upload larger than the user task store does (:data:`pitune_core.data.user_tasks.LIMITS`)."""
    from pitune_core.data.user_tasks import LIMITS  # lazy: loads safetensors

    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", host, "--server.port", str(int(port)),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.maxUploadSize", str(LIMITS.upload_mb())]


def dashboard_env(study: str | os.PathLike, db: str | os.PathLike, base: dict | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PITUNE_STUDY"] = str(Path(study).expanduser().resolve())
    env["PITUNE_RUNS_DB"] = str(Path(db).expanduser().resolve())
    return env


def cmd_dashboard(args) -> int:
    if not APP.is_file():
        raise FileNotFoundError(f"the dashboard app is missing: {APP}")
    if not 0 < int(args.port) < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    if args.host not in LOCAL_HOSTS:
        print(f"pitune: warning: binding the dashboard to {args.host}: anyone who can reach this address can "
              "browse the study and launch training runs (there is no login). Use the default 127.0.0.1 and "
              "an SSH tunnel unless you mean it.", file=sys.stderr)
    env = dashboard_env(default_study() if args.study is None else args.study,
                        default_runs_db() if args.db is None else args.db)
    study = Path(env["PITUNE_STUDY"])
    if not (study / "manifest.json").is_file():
        print(f"pitune: note: {study} is not a complete study; the dashboard will show how to rebuild it "
              f"(`pitune precompute --out {study}`).", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"pitune dashboard: http://{shown}:{args.port}  (study {study}, runs {env['PITUNE_RUNS_DB']})",
          file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    os.chdir(REPO)  # so that .streamlit/config.toml applies; all paths above are absolute
    cmd = streamlit_command(args.host, args.port)
    os.execve(cmd[0], cmd, env)
    return 0  # pragma: no cover - execve does not return


def register(sub, add) -> None:
    sp = add("dashboard", cmd_dashboard, "open the interactive dashboard (task graph, top-k, launch runs)")
    sp.add_argument("--study", default=None,
                    help="study directory written by `pitune precompute` (default: $PITUNE_STUDY, else the "
                         "shipped precomputed/)")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=int, default=8501)
    sp.add_argument("--db", default=None,
                    help="run registry database (default: $PITUNE_RUNS_DB or runs/registry.sqlite)")


class DashboardServer:
    """The dashboard as a background server (own process group) for tests and benchmarks:
    ``with DashboardServer(env, port, log_path) as url: ...``. Waits for ``/_stcore/health``."""

    def __init__(self, env: dict[str, str], port: int, log_path: str | os.PathLike, app: str | os.PathLike = APP,
                 timeout: float = 90.0):
        self.env, self.port, self.log_path, self.app, self.timeout = env, int(port), Path(log_path), app, timeout
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.log = None

    def __enter__(self) -> str:
        import subprocess
        import time
        import urllib.request

        cmd = [sys.executable, "-m", "streamlit", "run", str(self.app), "--server.address", "127.0.0.1",
               "--server.port", str(self.port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none"]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + self.timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        return self.url
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"streamlit did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.3)

    def __exit__(self, *exc) -> None:
        import signal
        import subprocess

        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        if self.log is not None:
            self.log.close()
