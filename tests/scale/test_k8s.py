"""The Kubernetes recipe matches the bento: image name, port, probes on BentoML's health endpoints."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def _load(name):
    return yaml.safe_load((K8S / name).read_text())


def test_deployment_probes_ports_image_match_bentofile():
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    dep = _load("deployment.yaml")
    assert dep["kind"] == "Deployment"
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["image"].split(":")[0] == bento["name"]
    (port,) = c["ports"]
    assert port["containerPort"] == 3000
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["port"] in (3000, port["name"])
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert {e["name"]: e["value"] for e in c["env"]}["SEG_DEVICE"] == "cuda"
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert dep["spec"]["selector"]["matchLabels"] == dep["spec"]["template"]["metadata"]["labels"]


def test_service_and_hpa_point_at_the_deployment():
    dep, svc, hpa = _load("deployment.yaml"), _load("service.yaml"), _load("hpa.yaml")
    assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["ports"][0]["targetPort"] in ("http", 3000)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 1 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_drift_alert_fires_on_the_services_drift_gauge_over_its_threshold():
    from contract.metrics import DRIFT_ALERT

    rules = {r["alert"]: r for g in _load("alerts.yaml")["spec"]["groups"] for r in g["rules"]}
    drift = rules["SegmentationInputDrift"]
    assert drift["expr"] == f"max(seg_drift) > {DRIFT_ALERT}" and drift["for"]
    assert "seg_model_reloads_total" in rules["SegmentationModelReloadFailed"]["expr"]
