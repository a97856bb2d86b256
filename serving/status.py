"""GET /model: what is served and how: the model's metadata and version, the device and variant in use and why,
its confidence, drift and reload state, the capture, batching, admission and limits."""

from __future__ import annotations

from . import pipeline


def describe(svc) -> dict:
    """The model's metadata, version, provider and variant in use (and why), confidence, drift, reloads,
    capture, batching, admission and limits (GET /model)."""
    cfg, model = svc.config, svc.model
    rt, meta = model.runtime, model.meta
    return {
        "version": model.version,
        "metadata": meta.describe(),
        "provider": rt.provider,
        "device_reason": rt.device_reason,
        "variant": rt.variant,
        "variant_reason": rt.variant_reason,
        "int8_check": rt.int8_check,
        "model_file": str(rt.path),
        "model_source": cfg.model_source,
        "confidence": {"available": rt.has_probs, "uncertain_below": cfg.uncertain_below}
        if rt.has_probs
        else {"available": False, "why": "the model has no `probs` output (exported with --no-probs or before)"},
        "drift": svc.monitor.describe(),
        "reload": svc.watcher.describe(),
        "capture": svc.capture.describe() if svc.capture else "off (SEG_CAPTURE_DIR unset)",
        "batching": {
            "max_batch_size": cfg.max_batch_size,
            "policy": "same-shape inputs, batched whenever the model is free (no fixed window)",
            "seconds_per_input": model.batcher.seconds_per_unit,
        },
        "admission": {
            "max_latency_ms": cfg.max_latency_ms,
            "max_concurrency_per_worker": cfg.max_concurrency,
            "max_tiles": cfg.max_tiles,
            "queued_seconds": svc.admission.ahead_s(),
            "seconds_per_upload_pixel": {"seed": svc.admission.seed_per_pixel, **svc.admission.per_pixel},
            "in_flight": svc.admission.in_flight,
            "pending_admission": svc.admission.pending,
            "limit_seconds": svc.admission.limit_s,  # the work admitted against (serving.batching: the tail's target)
            "typical_request_seconds": svc.admission.typical,
        },
        "geometry": {
            "dynamic_hw": meta.dynamic_hw,
            "training_size": list(meta.input_size),
            "resize": "keep aspect, short side to the training size, pad to 32, scores upsampled"
            if meta.dynamic_hw
            else "squish to the model size, scores upsampled",
            "warmed_up_shapes": [list(x) for x in pipeline.warmup_shapes(meta)],
        },
        "tiling": {"tile_above_pixels": cfg.tile_above, "overlap": cfg.tile_overlap or "a quarter of a tile"},
        "threads": cfg.intra_op_threads,
        "workers": cfg.resolved_workers,
        "limits": {"max_bytes": cfg.max_bytes, "max_pixels": cfg.max_pixels, "timeout_s": cfg.timeout_s},
    }
