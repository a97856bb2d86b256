"""The image recipe kept honest without building it (`make image-check` builds and runs it: minutes, not CI):
the Containerfile, the flavours' requirements, the local base, and the Kubernetes manifests that use the image."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from deploy.image import __main__ as image

ROOT = Path(__file__).resolve().parents[2]
RECIPE = (ROOT / "deploy" / "image" / "Containerfile").read_text()


def _directive(name: str) -> list[str]:
    return [ln.split(None, 1)[1] for ln in RECIPE.splitlines() if ln.startswith(name + " ")]


def test_containerfile_serves_the_bento_as_a_non_root_user_on_the_probed_port():
    assert _directive("ARG")[0] == f"BASE={image.LOCAL_BASE}" and _directive("FROM") == ["${BASE}"]
    assert _directive("USER") == ["1034"] and _directive("EXPOSE") == ["3000"]
    assert _directive("ENTRYPOINT") == ['["/opt/venv/bin/bentoml", "serve", "segmentation:latest"]']
    assert "bentoml import /tmp/segmentation.bento" in RECIPE  # the bento, with its model, in the image's own store
    env = dict(re.findall(r"(\w+)=(\S+)", RECIPE[RECIPE.index("ENV ") : RECIPE.index("COPY ")]))
    assert env["BENTOML_PORT"] == "3000" and env["BENTOML_HOST"] == "0.0.0.0"
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert env["SEG_MODEL"] == bento["models"][0]  # the model packed in the bento, by tag
    assert "--no-index --find-links /tmp/wheelhouse" in RECIPE  # nothing downloaded inside the build


def test_flavours_take_their_onnxruntime_and_keep_the_bentos_other_requirements(tmp_path):
    req = tmp_path / "env" / "python" / "requirements.txt"
    req.parent.mkdir(parents=True)
    req.write_text("bentoml==1.4.40\nonnxruntime-gpu==1.31.1\nnumpy>=1.26,<3\n# a comment\n")
    assert image.requirements(tmp_path, "cpu") == ["bentoml==1.4.40", "numpy>=1.26,<3", "onnxruntime==1.31.1"]
    assert image.requirements(tmp_path, "cuda") == [
        "bentoml==1.4.40",
        "numpy>=1.26,<3",
        "onnxruntime-gpu[cuda,cudnn]==1.31.1",
    ]
    assert image.image_ref("segmentation:abc123", "cuda") == ("segmentation:abc123-cuda", "segmentation:cuda")


def test_the_bentos_own_build_file_asks_for_python_3_11():
    docker = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["docker"]
    assert docker["python_version"] == "3.11" and docker["distro"] == "debian" and "base_image" not in docker


def test_local_base_is_debian_12_with_python_3_11(monkeypatch):
    calls = []
    monkeypatch.setattr(image.shutil, "which", lambda name: "/usr/sbin/" + name)
    monkeypatch.setattr(image, "_run", lambda cmd, what, **kw: calls.append(cmd) or type("R", (), {"stdout": "ctr"})())
    monkeypatch.setattr(image.subprocess, "run", lambda *a, **kw: (_ for _ in ()).throw(FileNotFoundError(a[0][0])))
    assert image.make_base("buildah") == image.LOCAL_BASE  # the clean-up of the working container never fails the build
    (boot,) = [c for c in calls if c[0] == "debootstrap"]
    assert (
        "bookworm" in boot
        and "--include=python3.11,python3.11-venv,python3-distutils,python3-pip-whl,python3-setuptools-whl,"
        "ca-certificates"
        in boot
    )
    assert calls[-1][-2:] == ["ctr", image.LOCAL_BASE] and "vfs" in calls[-1]  # committed as the default base


def test_no_engine_is_one_line(monkeypatch):
    monkeypatch.setattr(image.shutil, "which", lambda name: None)
    with pytest.raises(image.ImageError, match="no container engine: install docker, podman or buildah"):
        image.engine()


def test_kubernetes_runs_the_cuda_image_make_image_tags():
    dep = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["image"] == image.image_ref("segmentation:any", "cuda")[1]
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(_directive("USER")[0])
    assert c["ports"][0]["containerPort"] == int(_directive("EXPOSE")[0])
    assert "args" not in c  # the image's entry point serves the bento
    env = {e["name"]: e["value"] for e in c["env"]}
    assert int(env["SEG_WORKERS"]) == int(c["resources"]["requests"]["cpu"])  # a worker per requested core


FAKE_BUILDAH = r'''#!__PYTHON__
"""A stand-in for buildah with chroot isolation: `run` starts the entry point's processes detached from its own
process group (as BentoML's workers end up, reparented to init), one of them deaf to SIGTERM."""
import json, os, sys, time
args = [a for a in sys.argv[1:] if a not in ("--storage-driver", "vfs")]
if args[0] == "from":
    print("fake-ctr")
elif args[0] == "inspect":
    print(json.dumps({"OCIv1": {"config": {"Entrypoint": ["serve"]}}}))
elif args[0] == "run":
    env = dict(os.environ)
    for i, a in enumerate(args):
        if a == "--env":
            k, v = args[i + 1].split("=", 1)
            env[k] = v
    server = ("import http.server, os, signal, sys\n"
              "if sys.argv[1] == 'deaf': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "class H(http.server.BaseHTTPRequestHandler):\n"
              "    def do_GET(self): self.send_response(200); self.end_headers(); self.wfile.write(b'ok')\n"
              "    def log_message(self, *a): pass\n"
              "port = int(os.environ['BENTOML_PORT']) if sys.argv[1] == 'server' else 0\n"
              "http.server.HTTPServer(('127.0.0.1', port), H).serve_forever()\n")
    for role in ("server", "deaf"):
        if os.fork() == 0:  # double fork: the grandchild belongs to no process group of ours
            os.setsid()
            if os.fork() == 0:
                os.execve(sys.executable, [sys.executable, "-c", server, role], env)
            os._exit(0)
    time.sleep(3600)
'''


@pytest.mark.parametrize("ending", ["passed", "failed", "interrupted"])
def test_a_check_leaves_nothing_of_the_image_running(tmp_path, monkeypatch, ending):
    """With the engine faked (its processes leave the run's process group, one ignores SIGTERM): after the check,
    passed, failed or interrupted by Ctrl-C, no process of it is left and its port is free."""
    import os
    import sys
    import time

    import requests

    from loadtest.server import free_port

    fake = tmp_path / "buildah"
    fake.write_text(FAKE_BUILDAH.replace("__PYTHON__", sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    port = free_port()
    started = image._started("buildah", "segmentation:cpu", {"BENTOML_PORT": str(port)}, port)
    started.grace = 1.0  # the deaf process is killed after it
    errors = {"passed": None, "failed": RuntimeError("no answer"), "interrupted": KeyboardInterrupt()}
    expected = {"passed": None, "failed": image.ImageError, "interrupted": KeyboardInterrupt}[ending]
    try:
        with started:
            deadline = time.monotonic() + 30
            while len(image.tagged(started.marker)) < 2 or image.port_free(port):
                assert time.monotonic() < deadline, "the fake image never came up"
                time.sleep(0.1)
            assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
            if errors[ending] is not None:
                raise errors[ending]
    except BaseException as exc:
        assert expected is not None and isinstance(exc, expected), exc
    else:
        assert expected is None
    assert image.tagged(started.marker) == [] and image.port_free(port)
