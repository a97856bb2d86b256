"""Run `bentoml serve` in a subprocess on 127.0.0.1 for tests, benchmarks and load scripts."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]  # the repository
RESULTS = ROOT / "benchmarks" / "results"  # where the benchmarks and load tests write their current reports


def write_report(name: str, md: str, data, results: Path = RESULTS) -> Path:
    """Print `md` and write it to <results>/<name>.md, `data` beside it as .json (the history is git's)."""
    out = results / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2, default=float))
    print(md)
    print(f"report: {out}")
    return out


BENTOML = str(Path(sys.executable).with_name("bentoml"))


class ServerError(RuntimeError):
    """The server did not come up; the message is one line saying why (and where its log is)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(
    url: str, proc: subprocess.Popen | None = None, timeout: float = 120.0, what: str = "bentoml serve"
) -> None:
    """Poll `url`/readyz until it answers 200. The port accepts connections before the workers have
    warmed up, so slow or refused answers both mean "not yet"; a dead process or the deadline raise
    ServerError."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            if requests.get(url + "/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise ServerError(f"{what} not ready after {timeout:.0f} s at {url}")
        time.sleep(0.2)


@contextlib.contextmanager
def process(
    cmd: list[str],
    what: str,
    timeout: float = 120.0,
    *,
    cwd: Path = ROOT,
    env: dict | None = None,
    log=subprocess.DEVNULL,
    stop_timeout: float = 20.0,
):
    """Run an HTTP server command listening on a free port (its `{port}` placeholder) in its own process
    group; yield (process, URL) once /readyz answers; stop the whole group afterwards."""
    port = free_port()
    proc = subprocess.Popen(
        [a.replace("{port}", str(port)) for a in cmd],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout, what=what)
        yield proc, url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@contextlib.contextmanager
def served(model_dir: Path, timeout: float = 120.0, log_path: Path | None = None, cwd: Path = ROOT, **env):
    """Yield the `bentoml serve` process of `model_dir` (its `.url` is the base URL); stops it afterwards.
    `cwd` is the checkout whose `serving` package runs (another worktree for before/after runs)."""
    full_env = {
        **os.environ,
        "SEG_MODEL_DIR": str(model_dir),
        "BENTOML_DO_NOT_TRACK": "true",
        **{k: str(v) for k, v in env.items()},
    }
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    cmd = [BENTOML, "serve", "serving.service:SegmentationService", "--host", "127.0.0.1", "--port", "{port}"]
    try:
        with process(
            cmd,
            f"bentoml serve of {model_dir}" + (f" (log: {log_path})" if log_path else ""),
            timeout,
            cwd=cwd,
            env=full_env,
            log=log,
        ) as (proc, url):
            proc.url = url
            yield proc
    finally:
        if log_path:
            log.close()
