"""BentoML's model store and `bentoml build`: the export registered under a tag, served by that tag, and
packed by tag into a bento that works offline: serving code + model, serving-only packages, a Python 3.11
base and a non-root user in BentoML's generated Dockerfile; the built bento serves a real request."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import requests
import yaml
from contract_model import make_contract_model, png_bytes

from loadtest.server import BENTOML, ROOT, free_port, wait_ready


def test_model_store_tag_and_bento_build_offline(tmp_path):
    src = tmp_path / "src"
    for package in ("contract", "serving"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "bentofile.yaml", src / "bentofile.yaml")
    model = tmp_path / "export"
    make_contract_model(model / "model.onnx")
    (model / "samples").mkdir()
    (model / "samples" / "sample_0.png").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    home = tmp_path / "bentoml_home"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "PYTHONPATH": str(ROOT)}
    env.pop("SEG_MODEL_DIR", None)
    r = subprocess.run(
        [sys.executable, "-m", "contract.store", str(model)], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and r.stdout.startswith("segmentation:"), r.stderr[-1500:]
    tag = r.stdout.strip()
    listed = subprocess.run([BENTOML, "models", "list"], env=env, capture_output=True, text=True, timeout=60).stdout
    assert tag in listed
    info = yaml.safe_load((home / "models" / "segmentation" / tag.split(":")[1] / "model.yaml").read_text())
    assert info["metadata"]["classes"] == ["background", "red", "green"] and info["metadata"]["variants"] == ["fp32"]

    # served by tag, straight from the store
    port = free_port()
    proc = subprocess.Popen(
        [BENTOML, "serve", "serving.service:SegmentationService", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env={**env, "SEG_MODEL": "segmentation:latest", "SEG_WORKERS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        m = requests.get(f"http://127.0.0.1:{port}/model", timeout=10).json()
        assert m["model_source"] == "segmentation:latest" and str(home) in m["model_file"]
        assert requests.get(f"http://127.0.0.1:{port}/ui/samples", timeout=10).json() == ["sample_0.png"]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)

    r = subprocess.run([BENTOML, "build"], cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (bento,) = [p for p in (home / "bentos" / "segmentation").iterdir() if p.is_dir() and p.name != "latest"]
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["name"] == "segmentation" and info["service"] == "serving.service:SegmentationService"
    assert [m["tag"] for m in info["models"]] == [tag]  # packed by tag: `bentoml export` (and containerize) carry it
    archive = tmp_path / "segmentation.bento"
    r = subprocess.run(
        [BENTOML, "export", "segmentation:latest", str(archive)], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-1000:]
    import tarfile

    assert f"./models/segmentation/{tag.split(':')[1]}/model.onnx" in tarfile.open(archive).getnames()
    files = {p.relative_to(bento / "src").as_posix() for p in (bento / "src").rglob("*") if p.is_file()}
    assert {
        "serving/service.py",
        "serving/runtime.py",
        "serving/imaging.py",
        "serving/config.py",
        "serving/ui/index.html",
        "contract/metadata.py",
        "contract/metrics.py",
        "contract/store.py",
    } <= files
    assert not any(f.startswith(("training/", "tests/", "exported_models/")) for f in files)
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime-gpu==1.31.1" in reqs and "bentoml==1.4.40" in reqs
    assert "torch" not in reqs and "fastai" not in reqs
    docker = (bento / "env" / "docker" / "Dockerfile").read_text()
    froms = [ln.split()[1] for ln in docker.splitlines() if ln.startswith("FROM ")]
    assert froms and all(f.startswith("python:3.11") for f in froms), froms  # the Python the bento was built for
    user_lines = [ln for ln in docker.splitlines() if ln.startswith("USER ")]
    assert user_lines and user_lines[-1].split()[1] not in ("root", "0")
    assert "EXPOSE 3000" in docker and "SEG_MODEL" in docker and "segmentation:latest" in docker
    assert (
        "Semantic segmentation with a fastai U-Net" in info.get("description", "")
        or "Semantic segmentation" in (bento / "README.md").read_text()
    )

    # the built bento serves its packed model by tag (SEG_MODEL: the container's ENV from bentofile.yaml)
    port = free_port()
    proc = subprocess.Popen(
        [BENTOML, "serve", "segmentation:latest", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env={**env, "SEG_WORKERS": "1", "SEG_MODEL": "segmentation:latest"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        r = requests.post(
            f"http://127.0.0.1:{port}/segment",
            files={"image": ("x.png", png_bytes(np.zeros((20, 30, 3), np.uint8)))},
            timeout=30,
        )
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        docs = requests.get(f"http://127.0.0.1:{port}/docs.json", timeout=10).json()
        assert docs["info"]["description"].startswith("Semantic segmentation with a fastai U-Net")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
