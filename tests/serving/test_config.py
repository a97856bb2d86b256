"""Serving configuration from environment variables: defaults, overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import ConfigError, ServeConfig


def test_defaults_and_overrides():
    c = ServeConfig.from_env({})
    assert c.model_dir == Path("exported_models/default") and c.device == "auto" and c.max_batch_size == 8
    assert c.access_log is False and c.tracing is False and c.ort_spin is False and c.api_token == ""
    c = ServeConfig.from_env(
        {
            "SEG_MODEL_DIR": "m",
            "SEG_MAX_BATCH_SIZE": "3",
            "SEG_DEVICE": "cpu",
            "SEG_THREADS": "1",
            "SEG_TRACING": "True",
            "SEG_ORT_SPIN": "1",
            "SEG_ACCESS_LOG": "yes",
        }
    )
    assert c.model_dir == Path("m") and c.max_batch_size == 3 and c.device == "cpu" and c.intra_op_threads == 1
    assert c.tracing is True and c.ort_spin is True and c.access_log is True


def test_a_bad_setting_is_kept_for_start_up_not_raised_at_import():
    config, error = ServeConfig.load({"SEG_MAX_BATCH_SIZE": "abc"})
    assert config == ServeConfig() and isinstance(error, ConfigError) and "SEG_MAX_BATCH_SIZE" in str(error)
    assert ServeConfig.load({"SEG_MAX_BATCH_SIZE": "3"}) == (ServeConfig(max_batch_size=3), None)


def test_configuration_reference_lists_exactly_the_settings():
    """docs/serving.md's configuration table and ServeConfig name the same SEG_* variables, and the code reads no
    other."""
    import re
    import subprocess

    from loadtest.server import ROOT

    doc = (ROOT / "docs" / "serving.md").read_text()
    table = doc[doc.index("## Configuration") :]
    table = table[: table.index("\n\n", table.index("|"))]
    documented = re.findall(r"^\| `(SEG_[A-Z0-9_]+)` \|", table, re.M)  # one variable per row
    assert sorted(documented) == sorted(ServeConfig.env_names())
    assert ServeConfig.markdown() in doc  # made from the code (`python -m serving.config`), not retyped
    used = subprocess.run(
        ["git", "grep", "-h", "-o", "-E", "SEG_[A-Z0-9_]+", "--", "serving/"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert set(used) <= set(ServeConfig.env_names()) | {"SEG_"}, set(used) - set(ServeConfig.env_names())


def test_readme_short_table_states_the_real_defaults():
    """Each row of the README's "Configuration in short" names real settings, and its default is the code's."""
    import re

    from loadtest.server import ROOT

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration in short") :]
    table = table[table.index("| variable") : table.index("\n\n", table.index("| variable"))]
    rows = re.findall(r"^\| (`SEG_[^|]+) \| ([^|]+) \|", table, re.M)
    c = ServeConfig()
    expected = {
        "SEG_MODEL_DIR": f"`{c.model_dir}`",
        "SEG_DEVICE": f"`{c.device}`",
        "SEG_VARIANT": f"`{c.variant}`",
        "SEG_MAX_BATCH_SIZE": str(c.max_batch_size),
        "SEG_MAX_LATENCY_MS": str(c.max_latency_ms),
        "SEG_API_TOKEN": "unset",
        "SEG_WORKERS": "one per core",
        "SEG_RELOAD_S": f"{c.reload_s} (`make serve`: 10)",
        "SEG_CAPTURE_DIR": "unset",
    }
    assert len(rows) == 9
    for names, default in rows:
        for name in re.findall(r"SEG_[A-Z_]+", names):
            assert name in ServeConfig.env_names()
            if name in expected:
                assert default.strip() == expected[name], (name, default)
    assert c.api_token == "" and c.workers == 0 and c.model == "" and c.capture_dir in ("", None)
    assert (
        "SEG_RELOAD_S=$${SEG_RELOAD_S:-10}" in (ROOT / "Makefile").read_text()
    )  # what the README says make serve sets


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"SEG_MAX_BATCH_SIZE": "abc"}, "SEG_MAX_BATCH_SIZE='abc': must be an integer"),
        ({"SEG_MAX_BATCH_SIZE": "0"}, "must be a positive integer"),
        ({"SEG_DEVICE": "tpu"}, "use auto, cuda or cpu"),
        ({"SEG_VARIANT": "int4"}, "use auto, fp32, int8 or fp16"),
        ({"SEG_THREADS": "64", "SEG_WORKERS": "2"}, "exceeds the"),
        ({"SEG_TRACING": "sometimes"}, "SEG_TRACING='sometimes': use true or false"),
        ({"SEG_ORT_SPIN": "2"}, "SEG_ORT_SPIN='2': use true or false"),
        ({"SEG_MAX_TILES": "0"}, "SEG_MAX_TILES=0: must be a positive integer"),
        ({"SEG_TIMEOUT_S": "5"}, "SEG_TIMEOUT_S=5 must exceed SEG_MAX_LATENCY_MS=10000"),
    ],
)
def test_bad_settings_name_the_variable(env, needle):
    with pytest.raises(ConfigError, match="SEG_") as e:
        ServeConfig.from_env(env)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_token_check():
    assert ServeConfig().token_ok("")
    c = ServeConfig(api_token="s3cret")
    assert c.token_ok("Bearer s3cret") and not c.token_ok("Bearer s3cre") and not c.token_ok("")


@pytest.mark.parametrize(
    "env,excluded,access",
    [
        (
            {},
            ["/segment", "/overlay", "/stats", "/confidence"],
            False,
        ),  # the defaults: no spans, no access line on the inference routes
        ({"SEG_TRACING": "false", "SEG_ACCESS_LOG": "false"}, ["/segment", "/overlay", "/stats", "/confidence"], False),
        ({"SEG_TRACING": "true", "SEG_ACCESS_LOG": "true"}, [], True),
    ],
)
def test_tracing_and_access_log_switches_reach_bentoml_service_config(env, excluded, access):
    import os
    import subprocess
    import sys

    code = (
        "from serving.service import SegmentationService as S; "
        "print(S.config['tracing']['excluded_urls'], S.config['logging']['access']['enabled'])"
    )
    base = {k: v for k, v in os.environ.items() if k not in ("SEG_TRACING", "SEG_ACCESS_LOG")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**base, **env})
    assert r.returncode == 0, r.stderr[-1000:]
    assert r.stdout.strip().splitlines()[-1] == f"{excluded} {access}"


def test_workers_default_to_one_per_core_on_cpu_and_on_gpu_capped(monkeypatch):
    from serving import config

    monkeypatch.setattr(config, "cores", lambda: 4)
    monkeypatch.setattr(config, "has_gpu", lambda: False)
    c = ServeConfig.from_env({})
    assert (c.resolved_workers, c.intra_op_threads) == (4, 1)
    assert (
        ServeConfig.from_env({"SEG_THREADS": "2"}).resolved_workers,
        ServeConfig.from_env({"SEG_THREADS": "2"}).intra_op_threads,
    ) == (2, 2)
    assert (
        ServeConfig.from_env({"SEG_WORKERS": "1"}).resolved_workers,
        ServeConfig.from_env({"SEG_WORKERS": "1"}).intra_op_threads,
    ) == (1, 4)
    assert ServeConfig.from_env({"SEG_DEVICE": "cuda"}).resolved_workers == 4  # every core feeds the GPU
    monkeypatch.setattr(config, "has_gpu", lambda: True)
    assert (ServeConfig.from_env({}).resolved_workers, ServeConfig.from_env({}).intra_op_threads) == (4, 1)
    assert ServeConfig.from_env({"SEG_DEVICE": "cpu"}).resolved_workers == 4
    monkeypatch.setattr(config, "cores", lambda: 32)
    assert ServeConfig.from_env({}).resolved_workers == config.GPU_WORKERS_MAX == 8  # one CUDA context each: capped
    assert ServeConfig.from_env({"SEG_WORKERS": "12"}).resolved_workers == 12
    with pytest.raises(ConfigError, match="SEG_WORKERS=-1: must be >= 0"):
        ServeConfig.from_env({"SEG_WORKERS": "-1"})


def test_defaults_have_one_home_each():
    """The model folder, the batch size, the upload limits, devices, variants and image extensions are defined
    once (contract.metadata, serving.config) and read everywhere else."""
    import re
    import subprocess

    import contract
    from contract import datasets
    from loadtest.server import ROOT
    from serving import predict, runtime

    assert contract.DEFAULT_MODEL_DIR == ServeConfig().model_dir == predict.PredictConfig(None, None).model_dir
    assert contract.DEFAULT_BATCH_SIZE == ServeConfig().max_batch_size == predict.PredictConfig(None, None).batch_size
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^MODEL_DIR \?= (.+)$", makefile, re.M).group(1) == str(contract.DEFAULT_MODEL_DIR)
    assert runtime.VARIANTS == ("auto", "fp32", "int8", "fp16") and runtime.DEVICES == ("auto", "cuda", "cpu")
    assert datasets.IMAGE_EXTENSIONS is contract.IMAGE_EXTENSIONS  # training's layouts read them there

    def grep(pattern: str) -> list[str]:
        out = subprocess.run(
            ["git", "grep", "-n", "-E", pattern, "--", "*.py", ":!tests/*"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip().splitlines()

    (model_dir,) = grep(r'Path\("exported_models/default"\)')  # the definition only
    assert model_dir.startswith("contract/metadata.py:") and "DEFAULT_MODEL_DIR =" in model_dir
    (batch,) = grep(r"\b(batch_size|max_batch_size|bs)(: int)? ?= ?8\b|DEFAULT_BATCH_SIZE = ")
    assert batch.startswith("contract/metadata.py:")
    limits = grep(r"\b(20_000_000|40_000_000)\b")
    assert [ln.split(":")[0] for ln in limits] == ["serving/config.py", "serving/config.py"], limits
    (extensions,) = grep(r'"\.jpeg", ')
    assert extensions.startswith("contract/metadata.py:")
