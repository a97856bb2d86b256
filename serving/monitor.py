"""What the answers say about the model, on /metrics: confidence, classes, drift against the model's reference.

Per answer: its mean top-1 probability and its share of uncertain pixels (contract.metrics.confidence) as
histograms (`seg_confidence`, `seg_uncertain_fraction`), its pixels per class (`seg_class_pixels_total`), and the
drift statistic: the population stability index (PSI) of the last `window` answers' mean confidences over the
equal-frequency bins of the model's reference (the same figures on its held-out images, stored by the export), as
the gauge `seg_drift` (per worker; the server's figure is the largest, `max(seg_drift)`). PSI above 0.25 is the usual
"significant shift" (deploy/k8s/alerts.yaml fires on it). A model without a reference publishes no drift.
"""

from __future__ import annotations

import functools
from collections import deque
from types import SimpleNamespace

import numpy as np

from contract.metrics import psi

MIN_ANSWERS = 50  # answers in the window before the drift figure means anything
DRIFT_EVERY = 10  # answers between two computations of the drift figure (a window of hundreds moves slowly)
BUCKETS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 1.0]


@functools.cache
def metrics() -> SimpleNamespace:
    """The service's Prometheus metrics, created in the worker: BentoML points prometheus_client at its multiprocess
    directory only after the service module is imported (bentoml.metrics is deprecated for prometheus_client)."""
    import prometheus_client as prom

    return SimpleNamespace(
        batch_size=prom.Histogram(
            "seg_batch_size", "Model inputs per ONNX Runtime call", buckets=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64]
        ),
        batch_seconds=prom.Histogram(
            "seg_batch_seconds", "Seconds per ONNX Runtime call", buckets=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3]
        ),
        refused=prom.Counter("seg_refused", "Requests refused before any model work, by status", ["status"]),
        confidence=prom.Histogram("seg_confidence", "Mean top-1 probability of an answer's pixels", buckets=BUCKETS),
        uncertain=prom.Histogram(
            "seg_uncertain_fraction", "Share of an answer's pixels below SEG_UNCERTAIN_BELOW", buckets=BUCKETS
        ),
        class_pixels=prom.Counter("seg_class_pixels", "Pixels answered per class", ["model", "class_name"]),
        drift=prom.Gauge(
            "seg_drift", "PSI of the recent answers' confidence against the model's reference", multiprocess_mode="max"
        ),
        reloads=prom.Counter("seg_model_reloads", "Model versions loaded (ok) or refused (failed)", ["outcome"]),
        captures=prom.Counter("seg_captures", "Uploads kept for labelling (written) or not (why)", ["outcome"]),
    )


class Monitor:
    """The figures of each answer into the metrics, and the rolling window the drift statistic is computed on."""

    def __init__(self, window: int):
        self.window: deque[float] = deque(maxlen=window)
        self.reference: dict | None = None
        self.drift: float | None = None
        self.m = metrics()
        self.answers = 0
        self._counters: tuple[str | None, list] = (None, [])  # the model version's class counters, looked up once

    def use(self, reference: dict | None) -> None:
        """A new model: its reference, and an empty window (its answers are not the old model's)."""
        self.reference, self.drift, self.answers = reference, None, 0
        self.window.clear()

    def answer(self, figures: dict | None, class_pixels: np.ndarray, classes, version: str) -> None:
        """One answer: its figures (None without probabilities) and its pixels per class (pipeline.Job.class_pixels)."""
        if self._counters[0] != version:
            self._counters = (version, [self.m.class_pixels.labels(model=version, class_name=c) for c in classes])
        for counter, n in zip(self._counters[1], class_pixels.tolist()):
            if n:
                counter.inc(n)
        if figures is None:
            return
        self.m.confidence.observe(figures["mean"])
        self.m.uncertain.observe(figures["uncertain_fraction"])
        self.window.append(figures["mean"])
        self.answers += 1
        if self.reference is not None and len(self.window) >= MIN_ANSWERS and self.answers % DRIFT_EVERY == 0:
            self.drift = psi(list(self.window), self.reference)
            self.m.drift.set(self.drift)

    def describe(self) -> dict:
        ref = self.reference
        return {"statistic": "psi of the recent answers' mean confidence over the reference's equal-frequency bins",
                "window": self.window.maxlen, "answers_in_window": len(self.window), "value": self.drift,
                "alert_above": ref["alert"] if ref else None,
                "reference": ref or "none: the model was exported without one (re-export it to get one)"}  # fmt: skip
