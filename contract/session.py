"""How a serving worker opens an exported model in ONNX Runtime: the session options the service, the Python
API and the export's speed check share (the export measures int8 against fp32 the way a worker runs them)."""

from __future__ import annotations


def session_options(threads: int | None = None, spin: bool = False):
    """The serving session options: every graph optimisation, `threads` intra-op threads, no spin-waiting
    unless `spin`."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    # ORT's idle worker threads spin-wait by default: in a server they burn the cores that decode,
    # encode and the event loop need between batches. SEG_ORT_SPIN=true restores spinning.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return so
