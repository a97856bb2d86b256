"""Run `bentoml serve` in a subprocess on 127.0.0.1 for tests, benchmarks and load scripts."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]  # the repository
BENTOML = str(Path(sys.executable).with_name("bentoml"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(model_dir: Path, timeout: float = 120.0, log_path: Path | None = None, **env):
    """Yield the base URL of a `bentoml serve` of `model_dir`; stops it afterwards. Raises if not ready in time."""
    port = free_port()
    full_env = {**os.environ, "SEG_MODEL_DIR": str(model_dir), "BENTOML_DO_NOT_TRACK": "true", **{k: str(v) for k, v in env.items()}}
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([BENTOML, "serve", "serving.service:SegmentationService", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {proc.returncode}")
            try:
                if requests.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"bentoml serve not ready after {timeout} s")
            time.sleep(0.2)
        proc.url = url
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        if log_path:
            log.close()
