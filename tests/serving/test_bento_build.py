"""`bentoml build` works offline and makes the bento we mean: serving code + default model, serving-only
packages, a CUDA 13 / cuDNN 9 base and a non-root user in the generated Dockerfile."""
from __future__ import annotations

import os
import shutil
import subprocess

import yaml

from contract_model import make_contract_model
from loadtest.server import BENTOML, ROOT


def test_bento_build_offline(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "serving", src / "serving", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "bentofile.yaml", src / "bentofile.yaml")
    make_contract_model(src / "exported_models" / "default" / "model.onnx")
    home = tmp_path / "bentoml_home"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "SEG_MODEL_DIR": str(src / "exported_models" / "default")}
    r = subprocess.run([BENTOML, "build"], cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (bento,) = [p for p in (home / "bentos" / "segmentation").iterdir() if p.is_dir() and p.name != "latest"]
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["name"] == "segmentation" and info["service"] == "serving.service:SegmentationService"
    files = {p.relative_to(bento / "src").as_posix() for p in (bento / "src").rglob("*") if p.is_file()}
    assert {"serving/service.py", "serving/runtime.py", "serving/imaging.py", "serving/config.py", "exported_models/default/model.onnx"} <= files
    assert not any(f.startswith(("training/", "tests/")) for f in files)
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime-gpu==1.31.1" in reqs and "bentoml==1.4.40" in reqs
    assert "torch" not in reqs and "fastai" not in reqs
    docker = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04" in docker  # CUDA 13 + cuDNN 9 for onnxruntime-gpu 1.31
    user_lines = [ln for ln in docker.splitlines() if ln.startswith("USER ")]
    assert user_lines and user_lines[-1].split()[1] not in ("root", "0")
    assert "EXPOSE 3000" in docker and "SEG_MODEL_DIR" in docker
