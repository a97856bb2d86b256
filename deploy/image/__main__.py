"""The serving image, built from the bento with whatever engine this machine has (docker, podman or buildah).

    python -m deploy.image base                  # a Debian 12 + Python 3.11 base made with debootstrap (no registry
    needed)
    python -m deploy.image build [--flavour cpu|cuda] [--base IMAGE]
    python -m deploy.image check [--flavour cpu|cuda]    # builds if needed, starts it, posts a real photo; one line

`make image` and `make image-check` call these. The build context is made on the host: the bento from
`bentoml build` (serving code, the model by tag, serving dependencies only) and a wheelhouse of every
wheel the flavour needs (`pip wheel`), so nothing is downloaded inside the build (where no registry may be
reachable) and the image is reproducible. `Containerfile` beside this file is the recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NAME = "segmentation"
LOCAL_BASE = "localhost/seg-base:bookworm-py311"
ORT_VERSION = "1.31.1"
# CPU: the plain onnxruntime wheel; CUDA: onnxruntime-gpu with NVIDIA's CUDA 13 and cuDNN 9 wheels (its extras)
ORT_FOR = {"cpu": f"onnxruntime=={ORT_VERSION}", "cuda": f"onnxruntime-gpu[cuda,cudnn]=={ORT_VERSION}"}


class ImageError(RuntimeError):
    """One line saying what went wrong and what to do."""


def engine() -> str:
    """docker or podman when their engine answers, else buildah (builds and runs without a daemon)."""
    for name in ("docker", "podman"):
        if shutil.which(name) and subprocess.run([name, "info"], capture_output=True, timeout=30).returncode == 0:
            return name
    if shutil.which("buildah"):
        return "buildah"
    raise ImageError("no container engine: install docker, podman or buildah (Debian: apt-get install buildah)")


def _cmd(eng: str, *args: str) -> list[str]:
    # buildah as root here: vfs storage (no overlay mounts in this sandbox) and chroot isolation
    return [eng, "--storage-driver", "vfs", *args] if eng == "buildah" else [eng, *args]


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ImageError(f"{what} failed ({' '.join(cmd[:4])} ...): {tail[0][:300]}")
    return r


def _quiet(cmd: list[str], **kw) -> int:
    """Clean-up and probes whose failure is an answer, not an error: the return code, 127 when the tool is missing."""
    try:
        return subprocess.run(cmd, capture_output=True, **kw).returncode
    except OSError:
        return 127


def image_exists(eng: str, ref: str) -> bool:
    return (
        _quiet(_cmd(eng, "inspect", "--type", "image", ref) if eng == "buildah" else [eng, "image", "inspect", ref])
        == 0
    )


def make_base(eng: str, tag: str = LOCAL_BASE) -> str:
    """Debian 12 (minbase) with Python 3.11 and venv, made by debootstrap from Debian's mirror and committed as `tag`
    (--include does not resolve dependencies: venv needs python3-distutils and the pip and setuptools wheels)."""
    if not shutil.which("debootstrap"):
        raise ImageError("debootstrap not found: apt-get install debootstrap (or pass --base with a Python 3.11 image)")
    with tempfile.TemporaryDirectory(prefix="seg-base-") as tmp:
        root = Path(tmp) / "rootfs"
        print(f"==> debootstrap bookworm into {root} (about 80 s)", flush=True)
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3.11,python3.11-venv,python3-distutils,python3-pip-whl,python3-setuptools-whl,ca-certificates",
                "bookworm",
                str(root),
            ],
            "debootstrap",
            timeout=1800,
        )
        shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        shutil.rmtree(root / "var" / "lib" / "apt" / "lists", ignore_errors=True)
        tar = Path(tmp) / "rootfs.tar"
        _run(["tar", "-C", str(root), "-cf", str(tar), "."], "tar of the root file system")
        if eng == "buildah":
            ctr = _run(_cmd(eng, "from", "scratch"), "buildah from scratch").stdout.strip()
            try:
                _run(_cmd(eng, "add", ctr, str(tar), "/"), "buildah add")
                _run(_cmd(eng, "config", "--cmd", "python3.11", "--env", "LANG=C.UTF-8", ctr), "buildah config")
                _run(_cmd(eng, "commit", ctr, tag), "buildah commit")
            finally:
                _quiet(_cmd(eng, "rm", ctr))
        else:
            _run([eng, "import", "--change", 'CMD ["python3.11"]', str(tar), tag], f"{eng} import")
    return tag


def build_bento() -> tuple[str, Path]:
    """`bentoml build` of the model `make serve` serves: exported_models/default registered in BentoML's model
    store first (a new version when it exists), else the store's latest; returns (bento tag, bento folder)."""
    import bentoml

    from contract import DEFAULT_MODEL_DIR
    from contract.store import register

    model_dir = ROOT / DEFAULT_MODEL_DIR
    if (model_dir / "model.onnx").is_file():
        print(f"==> registered {register(model_dir)} in BentoML's model store", flush=True)
    else:
        try:
            bentoml.models.get(f"{NAME}:latest")
        except bentoml.exceptions.NotFound:
            raise ImageError(
                f"{model_dir}: no model to pack; run `make model` (or `python -m training demo`) first"
            ) from None
    bento = bentoml.bentos.build_bentofile(str(ROOT / "bentofile.yaml"), build_ctx=str(ROOT))
    return str(bento.tag), Path(bento.path)


def requirements(bento: Path, flavour: str) -> list[str]:
    """The bento's own Python requirements, with the ONNX Runtime of the flavour."""
    lines = [ln.strip() for ln in (bento / "env" / "python" / "requirements.txt").read_text().splitlines()]
    reqs = [ln for ln in lines if ln and not ln.startswith("#") and not ln.lower().startswith(("onnxruntime", "-"))]
    return reqs + [ORT_FOR[flavour]]


def image_ref(bento_tag: str, flavour: str) -> tuple[str, str]:
    """(versioned, moving) image names: segmentation:<bento version>-<flavour> and segmentation:<flavour>."""
    version = bento_tag.split(":", 1)[1]
    return f"{NAME}:{version}-{flavour}", f"{NAME}:{flavour}"


def build(flavour: str = "cpu", base: str | None = None) -> str:
    """Build the flavour's image from a fresh bento; returns its versioned name."""
    eng = engine()
    base = base or LOCAL_BASE
    if base == LOCAL_BASE and not image_exists(eng, LOCAL_BASE):
        make_base(eng)
    t0 = time.perf_counter()
    tag, bento = build_bento()
    versioned, moving = image_ref(tag, flavour)
    with tempfile.TemporaryDirectory(prefix="seg-image-") as tmp:
        ctx = Path(tmp)
        import bentoml

        bentoml.export_bento(tag, str(ctx / "segmentation.bento"))
        wheels = ctx / "wheelhouse"
        wheels.mkdir()
        reqs = requirements(bento, flavour)
        (wheels / "requirements.txt").write_text("\n".join(reqs) + "\n")
        print(f"==> wheelhouse for {flavour}: {', '.join(reqs)}", flush=True)
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--disable-pip-version-check",
                "-q",
                "-w",
                str(wheels),
                "-r",
                str(wheels / "requirements.txt"),
            ],
            "pip wheel",
            timeout=3600,
        )
        print(f"==> {eng} build of {versioned} from {base}", flush=True)
        args = [
            "--build-arg",
            f"BASE={base}",
            "--build-arg",
            f"FLAVOUR={flavour}",
            "-f",
            str(HERE / "Containerfile"),
            "-t",
            versioned,
            str(ctx),
        ]
        cmd = (
            _cmd(eng, "bud", "--isolation", "chroot", "--layers=false", *args)
            if eng == "buildah"
            else [eng, "build", *args]
        )
        _run(cmd, f"{eng} build", timeout=3600)
    _run(_cmd(eng, "tag", versioned, moving) if eng == "buildah" else [eng, "tag", versioned, moving], "tag")
    print(
        f"==> built {versioned} (also {moving}) in {time.perf_counter() - t0:.0f} s, "
        f"{image_size(eng, versioned) / 1e6:.0f} MB",
        flush=True,
    )
    return versioned


def image_size(eng: str, ref: str) -> int:
    """Bytes of the image's layers as the engine reports them."""
    if eng == "buildah":  # its JSON has the size in words only ("386 MB", decimal units)
        info = json.loads(_run(_cmd(eng, "images", "--json", ref), "buildah images").stdout)
        number, unit = info[0]["size"].split()
        return int(float(number) * {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit])
    return int(_run([eng, "image", "inspect", "--format", "{{.Size}}", ref], f"{eng} image inspect").stdout.strip())


def entrypoint(eng: str, ref: str) -> list[str]:
    if eng == "buildah":
        cfg = json.loads(_run(_cmd(eng, "inspect", "--type", "image", ref), "buildah inspect").stdout)
        return cfg["OCIv1"]["config"]["Entrypoint"]
    return json.loads(_run([eng, "image", "inspect", "--format", "{{json .Config.Entrypoint}}", ref], "inspect").stdout)


def latest(eng: str, flavour: str) -> str | None:
    ref = f"{NAME}:{flavour}"
    return ref if image_exists(eng, ref) else None


CUDA_PROBE = """
import ctypes, glob, onnxruntime as ort
ort.preload_dlls()  # CUDA and cuDNN from NVIDIA's wheels, found in site-packages
assert "CUDAExecutionProvider" in ort.get_available_providers(), ort.get_available_providers()
loaded = []
for lib in ("libcudart.so.13", "libcublas.so.13", "libcudnn.so.9", "libcufft.so.12", "libcurand.so.10"):
    found = glob.glob("/opt/venv/lib/python3.11/site-packages/nvidia/**/" + lib, recursive=True)
    assert found, lib + " not in the image"
    ctypes.CDLL(found[0])
    loaded.append(lib)
print("onnxruntime", ort.__version__, "CUDAExecutionProvider listed;", ", ".join(loaded), "load")
"""


def check(flavour: str = "cpu", timeout: float = 180) -> str:
    """Start the flavour's image (built first if missing) and check it; returns the one-line verdict.

    CPU: `bentoml serve` through the image's entry point on a free port, /readyz, a real photo to /segment,
    the mask's size. CUDA (no GPU here): onnxruntime imports, CUDAExecutionProvider is listed, CUDA and
    cuDNN load."""
    eng = engine()
    ref = latest(eng, flavour) or build(flavour)
    size_mb = image_size(eng, ref) / 1e6
    if flavour == "cuda":
        out = _in_container(eng, ref, ["/opt/venv/bin/python", "-c", CUDA_PROBE])
        answer = out.strip().splitlines()[-1]
        return f"image {ref} ({eng}): {size_mb:.0f} MB; {answer} (no GPU here: serving on CUDA not run)"
    import io

    import numpy as np
    import requests
    import skimage.data
    from PIL import Image

    from loadtest.server import free_port, wait_ready

    port = free_port()
    env = {"BENTOML_HOST": "127.0.0.1", "BENTOML_PORT": str(port)}
    t0 = time.perf_counter()
    with _started(eng, ref, env, port) as proc:
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout=timeout, what=f"the image {ref}")
        ready = time.perf_counter() - t0
        photo = Image.fromarray(skimage.data.chelsea())
        buf = io.BytesIO()
        photo.save(buf, "PNG")
        r = requests.post(
            f"http://127.0.0.1:{port}/segment", files={"image": ("chelsea.png", buf.getvalue())}, timeout=60
        )
    if r.status_code != 200:
        raise ImageError(f"image {ref}: POST /segment answered {r.status_code}: {r.text[:200]}")
    mask = Image.open(io.BytesIO(r.content))
    if mask.size != photo.size:
        raise ImageError(
            f"image {ref}: the mask is {mask.size[0]}x{mask.size[1]}, the photo {photo.size[0]}x{photo.size[1]}"
        )
    classes = ", ".join(str(c) for c in np.unique(np.asarray(mask)))
    return (
        f"image {ref} ({eng}): {size_mb:.0f} MB, ready in {ready:.1f} s, POST /segment {r.status_code} "
        f"({mask.size[0]}x{mask.size[1]} mask for the {photo.size[0]}x{photo.size[1]} photo, classes {classes})"
    )


def _in_container(eng: str, ref: str, cmd: list[str]) -> str:
    if eng == "buildah":
        ctr = _run(_cmd(eng, "from", ref), "buildah from").stdout.strip()
        try:
            return _run(
                _cmd(eng, "run", "--isolation", "chroot", ctr, "--", *cmd), "the check inside the image", timeout=300
            ).stdout
        finally:
            _quiet(_cmd(eng, "rm", ctr))
    return _run(
        [eng, "run", "--rm", "--entrypoint", cmd[0], ref, *cmd[1:]], "the check inside the image", timeout=300
    ).stdout


def tagged(marker: str) -> list[int]:
    """The processes whose environment holds `marker` (SEG_CHECK_ID=...): what a check started, wherever it went.
    Under buildah's chroot isolation the container's processes share the host's process table, and BentoML's workers
    leave the `buildah run` process group (reparented to init): only their environment says whose they are."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker.encode() in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:  # gone meanwhile, or not ours to read
                continue
    return found


def reap(marker: str, grace: float = 15.0) -> list[int]:
    """Stop every process tagged with `marker`: SIGTERM (BentoML drains and stops its workers), then SIGKILL for what
    is left after `grace` seconds. Returns the processes that had to be killed."""
    import signal

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        pids = tagged(marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while tagged(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not tagged(marker):
            return pids if sig == signal.SIGKILL else []
    raise ImageError(f"processes {tagged(marker)} of the check ({marker}) survived SIGKILL")


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class _started:
    """The image's entry point running with the host's network and `env` added. On exit, whatever happened (a passed
    check, a failed one, Ctrl-C), nothing of it is left running: the engine stops the container, then every process
    carrying this check's SEG_CHECK_ID is stopped, and the port is free again."""

    grace = 15.0  # seconds the processes get to stop after SIGTERM (BentoML drains its requests) before SIGKILL

    def __init__(self, eng: str, ref: str, env: dict[str, str], port: int | None = None):
        self.eng, self.ref, self.ctr, self.port = eng, ref, None, port
        self.marker = f"SEG_CHECK_ID={os.getpid()}-{time.time_ns()}"
        self.env = {**env, "SEG_CHECK_ID": self.marker.split("=", 1)[1]}

    def __enter__(self) -> subprocess.Popen:
        envs = [a for k, v in self.env.items() for a in ("--env" if self.eng == "buildah" else "-e", f"{k}={v}")]
        if self.eng == "buildah":
            self.ctr = _run(_cmd(self.eng, "from", self.ref), "buildah from").stdout.strip()
            cmd = _cmd(self.eng, "run", "--isolation", "chroot", *envs, self.ctr, "--", *entrypoint(self.eng, self.ref))
        else:
            self.ctr = f"seg-check-{os.getpid()}"
            cmd = [self.eng, "run", "--rm", "--name", self.ctr, "--network", "host", *envs, self.ref]
        self.log = tempfile.NamedTemporaryFile(prefix="seg-image-check-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.proc

    def __exit__(self, exc_type, exc, tb):
        import signal

        if self.eng != "buildah":
            _quiet([self.eng, "stop", "-t", "10", self.ctr])
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        killed = reap(self.marker, self.grace)  # the workers the engine's stop did not reach
        if self.eng == "buildah":
            _quiet(_cmd(self.eng, "rm", self.ctr))
        self.log.close()
        if self.port is not None and not port_free(self.port):
            raise ImageError(f"port {self.port} is still taken after the check stopped its processes")
        if killed:
            print(
                f"deploy.image: {len(killed)} process(es) of the image ignored SIGTERM and were killed", file=sys.stderr
            )
        if exc_type is not None and exc_type is not KeyboardInterrupt:  # say what the container printed last
            tail = Path(self.log.name).read_text(errors="replace").strip().splitlines()[-3:]
            raise ImageError(f"{exc} (container output, {self.log.name}: {' | '.join(tail)[:400]})") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.image", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("base", help="make the local Debian 12 + Python 3.11 base image with debootstrap")
    for name in ("build", "check"):
        q = sub.add_parser(name)
        q.add_argument("--flavour", choices=("cpu", "cuda"), default="cpu")
        if name == "build":
            q.add_argument("--base", help=f"a Python 3.11 image (default: {LOCAL_BASE}, made by `base` when missing)")
    a = p.parse_args(argv)
    from loadtest.server import ServerError

    try:
        if a.command == "base":
            print(make_base(engine()))
        elif a.command == "build":
            print(build(a.flavour, a.base))
        else:
            print(check(a.flavour))
    except (ImageError, ServerError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"deploy.image: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the check's processes were stopped on the way out
        print("deploy.image: interrupted; nothing of the check is left running", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
