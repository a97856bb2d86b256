"""ONNX Runtime sessions for exported models: variant and provider choice, contract checks, warm-up.

ONNX Runtime lists CUDAExecutionProvider as available even without a GPU, and falls back to CPU
silently when it cannot load it; only `session.get_providers()` tells what is really in use, so that
is what we check and log.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from contract.metadata import VARIANT_FILES, ContractError, ModelMeta, check_model_dir
from contract.session import session_options

log = logging.getLogger("serving.runtime")

DEVICES = ("auto", "cuda", "cpu")
VARIANTS = ("auto", *VARIANT_FILES)


def nvidia_gpus() -> tuple[int, str]:
    """(NVIDIA GPUs on this host, how that was found), without loading any CUDA library: NVML's device count where
    the driver's management library (libnvidia-ml) is installed, else the device nodes a container runtime mounts
    for a GPU (/dev/nvidia0 ...). onnxruntime-gpu lists CUDAExecutionProvider whether or not a GPU exists, and
    trying it maps libcudart, libcublas, libcudnn ... into the process (about 250 MB per worker)."""
    import ctypes
    import glob

    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        nodes = glob.glob("/dev/nvidia[0-9]*")
        if nodes:
            return len(nodes), f"{len(nodes)} NVIDIA device node(s) ({', '.join(sorted(nodes))})"
        return 0, "no NVIDIA driver (libnvidia-ml) and no /dev/nvidia* device on this host"
    if nvml.nvmlInit_v2() != 0:
        return 0, "the NVIDIA driver's NVML did not initialise"
    try:
        count = ctypes.c_uint(0)
        ok = nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0
    finally:
        nvml.nvmlShutdown()
    return (count.value, f"NVML: {count.value} device(s)") if ok else (0, "NVML could not count the devices")


def choose_providers(device: str, available: list[str], device_id: int = 0) -> list:
    """Providers to ask ONNX Runtime for, in order. `cuda` missing from `available` raises ContractError. `auto`
    asks for CUDA when it is listed; `SegmentationRuntime.load` asks for `auto` only where a GPU is (nvidia_gpus)."""
    cuda = (
        "CUDAExecutionProvider",
        {
            "device_id": device_id,
            # EXHAUSTIVE (the default) re-tunes for every new input shape, and every batch size is one.
            "cudnn_conv_algo_search": "HEURISTIC",
            "arena_extend_strategy": "kSameAsRequested",
            "do_copy_in_default_stream": True,
        },
    )
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ContractError(
                "SEG_DEVICE=cuda but this onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu or use "
                "SEG_DEVICE=auto"
            )
        return [cuda, "CPUExecutionProvider"]
    if device == "auto":
        return ([cuda] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]
    raise ContractError(f"device {device!r}: use auto, cuda or cpu")


def _resolve_device(device: str, gpus: tuple[int, str] | None) -> tuple[str, str]:
    """(device, why): `auto` without an NVIDIA GPU (nvidia_gpus, or `gpus` in tests) is the CPU, CUDA not loaded."""
    if device != "auto":
        return device, f"SEG_DEVICE={device}"
    count, how = nvidia_gpus() if gpus is None else gpus
    return (device if count else "cpu"), f"auto: {how}" + ("" if count else "; CPU, CUDA not loaded")


def pick_variant(model_dir: Path, variant: str, on_cuda: bool) -> tuple[str, str]:
    """(variant, why): `auto` serves fp16 on CUDA and the export's int8 on CPU when those files exist
    (export writes model.int8.onnx only when it kept the accuracy rule there; `SegmentationRuntime.load`
    checks it again on this CPU), fp32 otherwise."""
    if variant != "auto":
        if not (model_dir / VARIANT_FILES[variant]).is_file():
            raise ContractError(
                f"{model_dir / VARIANT_FILES[variant]}: variant {variant} asked for but not there; export it "
                f"(--{variant}) or use SEG_VARIANT=auto"
            )
        return variant, f"SEG_VARIANT={variant}"
    if on_cuda:
        if (model_dir / VARIANT_FILES["fp16"]).is_file():
            return "fp16", "auto: fp16 on CUDA"
        return "fp32", "auto: CUDA, and the export made no model.fp16.onnx"
    if (model_dir / VARIANT_FILES["int8"]).is_file():
        return "int8", "auto: int8 on CPU (the export kept model.int8.onnx by the accuracy rule)"
    return "fp32", "auto: CPU, and the export kept no model.int8.onnx"


class SegmentationRuntime:
    """One ONNX Runtime session over an exported model; `run` maps (N, H, W, 3) uint8 -> (N, H, W) uint8."""

    def __init__(
        self,
        session,
        meta: ModelMeta,
        variant: str,
        path: Path,
        variant_reason: str = "",
        int8_check: dict | None = None,
    ):
        self.session, self.meta, self.variant, self.path = session, meta, variant, path
        self.variant_reason = variant_reason
        self.int8_check = int8_check  # the accuracy rule re-run on this CPU (None: not run)
        self.device_reason = ""  # why this device: the setting, or what `auto` found on the host
        self.provider = session.get_providers()[0]
        self._outputs = [o.name for o in session.get_outputs()]
        self._io_binding = self.provider == "CUDAExecutionProvider"  # inputs/outputs cross to the GPU once per batch

    @classmethod
    def load(
        cls,
        model_dir: Path | str,
        device: str = "auto",
        variant: str = "auto",
        threads: int | None = None,
        spin: bool = False,
        available: list[str] | None = None,
        _session_factory=None,
        recheck: bool = True,
        gpus: tuple[int, str] | None = None,
    ) -> "SegmentationRuntime":
        """Open the model in `model_dir` on `device` ("auto" | "cuda" | "cpu"), checking its contract. Where `auto`
        picks int8, its accuracy rule is run again on this CPU first (`recheck`); if int8 fails it here, fp32 is served.

        `auto` decides from the host before any CUDA library is loaded: without an NVIDIA GPU (nvidia_gpus) it opens
        a CPU session only. `available`, `_session_factory` and `gpus` exist for tests (faked providers and devices)."""
        import onnxruntime as ort

        model_dir = check_model_dir(model_dir)
        ort.set_default_logger_severity(4)  # the CUDA-load failure is reported by us, in one line
        available = ort.get_available_providers() if available is None else available
        device, device_reason = _resolve_device(device, gpus)
        providers = choose_providers(device, available)
        wants_cuda = any(isinstance(p, tuple) for p in providers)
        if wants_cuda and hasattr(ort, "preload_dlls"):
            # CUDA 13 and cuDNN 9 from NVIDIA's wheels (the CUDA image has no system CUDA); silent without them
            ort.preload_dlls()
        chosen, why = pick_variant(model_dir, variant, wants_cuda)
        path = model_dir / VARIANT_FILES[chosen]
        so = session_options(threads, spin)
        factory = _session_factory or ort.InferenceSession

        def again(on: str, var: str) -> "SegmentationRuntime":
            return cls.load(model_dir, on, var, threads, spin, available, _session_factory, recheck)

        try:
            session = factory(str(path), so, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
            if variant == "auto" and chosen == "fp16" and device == "auto":
                log.warning("%s did not load (%s); using fp32 on CPU", path, exc.__class__.__name__)
                return again("cpu", "auto")
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
            raise ContractError(f"{path}: ONNX Runtime cannot load it ({first}); re-export the model") from None
        if wants_cuda and session.get_providers()[0] != "CUDAExecutionProvider":
            return _cuda_not_loaded(device, device_reason, lambda: again("cpu", variant))
        _check_io(session, path)
        int8_check = None
        if chosen == "int8" and variant == "auto" and recheck:
            int8_check, session, chosen, path, why = _settle_int8(model_dir, session, so, factory, why)
        return cls._opened(session, chosen, path, why, int8_check, device_reason)

    @classmethod
    def _opened(cls, session, chosen: str, path: Path, why: str, int8_check, device_reason: str):
        """The runtime over an open session, its metadata read and what was chosen logged in one line."""
        meta = ModelMeta.from_props(session.get_modelmeta().custom_metadata_map, str(path))
        rt = cls(session, meta, chosen, path, why, int8_check)
        rt.device_reason = device_reason
        log.warning("model %s: provider %s, variant %s (%s), input %s, classes %s", path, rt.provider, chosen, why,
                    meta.input_size, ", ".join(meta.classes))  # fmt: skip
        return rt

    @property
    def has_probs(self) -> bool:
        """The graph outputs class probabilities (`probs`): confidence figures, scores upsampled at boundaries."""
        return "probs" in self._outputs

    def run(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, H, W) uint8 class ids."""
        if self._io_binding:
            return self._run_bound(images)[0]
        return self.session.run(["mask"], {"image": images})[0]

    def run_scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, H, W, 3) uint8 -> ((N, H, W) uint8 class ids, (N, C, H, W) float32 probabilities or None
        when the model has no `probs` output), in one run."""
        if "probs" not in self._outputs:
            return self.run(images), None
        if self._io_binding:
            masks, probs = self._run_bound(images, ["mask", "probs"])
            return masks, probs
        masks, probs = self.session.run(["mask", "probs"], {"image": images})
        return masks, probs

    def _run_bound(self, images: np.ndarray, outputs=("mask",)) -> list[np.ndarray]:
        # IO binding: the input goes to the GPU once and the outputs are fetched once per batch.
        binding = self.session.io_binding()
        binding.bind_cpu_input("image", np.ascontiguousarray(images))
        for name in outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def warmup(self, batch_sizes, shapes) -> None:
        """Run every batch size at every (H, W) in `shapes` once, so the first real requests do not pay
        allocation or (on CUDA) algorithm search for those shapes."""
        for h, w in shapes:
            for n in batch_sizes:
                self.run_scores(np.zeros((n, h, w, 3), dtype=np.uint8))


def _settle_int8(model_dir: Path, session, so, factory, why: str):
    """int8's accuracy rule run again on this CPU: (the check, then the session, variant, path and why to serve: int8
    where it passes, else the check's fp32 session)."""
    check, fp32_session = _recheck_int8(model_dir, session, so, factory)
    if check["kept"]:
        return (
            check,
            session,
            "int8",
            model_dir / VARIANT_FILES["int8"],
            f"{why}; re-checked on this CPU: {check['why']}",
        )
    why = f"auto: int8 failed the accuracy rule on this CPU ({check['why']}); serving fp32"
    log.warning("model %s: %s", model_dir, why)
    path = model_dir / VARIANT_FILES["fp32"]
    _check_io(fp32_session, path)
    return check, fp32_session, "fp32", path, why


def _cuda_not_loaded(device: str, device_reason: str, on_cpu) -> "SegmentationRuntime":
    """CUDA listed but not loaded: an error where SEG_DEVICE=cuda asked for it, else the runtime `on_cpu()` opens (the
    variant was chosen for CUDA: the CPU's choice instead, auto: int8)."""
    if device == "cuda":
        raise ContractError(
            "SEG_DEVICE=cuda but CUDA did not load (no GPU, or CUDA 13 / cuDNN 9 libraries missing); use "
            "SEG_DEVICE=auto or cpu"
        )
    log.warning("CUDA execution provider listed but not usable here; running on CPU")
    rt = on_cpu()
    rt.device_reason = f"{device_reason}, but CUDA did not load; CPU"
    return rt


def _recheck_int8(model_dir: Path, int8_session, so, factory) -> tuple[dict, object]:
    """The int8 accuracy rule (contract.metrics) on the held-out images bundled in `model_dir`/check, scored
    here, on this CPU, for int8 and fp32: ({"kept", "why", and the rule's figures}, the fp32 session it opened,
    or None). A folder without a check (exported before it was bundled) keeps int8 and says so."""
    import time

    from contract import metrics as accuracy

    bundled = accuracy.read_check(model_dir)
    if bundled is None:
        return {
            "kept": True,
            "why": f"not re-checked: {model_dir} has no {accuracy.CHECK_DIR}/ (re-export to bundle held-out images)",
        }, None
    images, truths, info = bundled
    t = time.perf_counter()
    fp32 = factory(str(model_dir / VARIANT_FILES["fp32"]), so, providers=["CPUExecutionProvider"])
    result = accuracy.judge(
        lambda x: fp32.run(["mask"], {"image": x})[0],
        lambda x: int8_session.run(["mask"], {"image": x})[0],
        images,
        truths,
        info["codes"],
        info.get("void"),
        info.get("metric", "dice_fg"),
    )
    result = accuracy.recheck(result, info)
    result["seconds"] = time.perf_counter() - t
    result["why"] = accuracy.explain(result) + f" on {result['images']} held-out images"
    result["why"] += f"; {result['kernels']}" if "kernels" in result else ""
    return result, fp32


def _check_io(session, path: Path) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or inputs[0].name != "image" or inputs[0].type != "tensor(uint8)" or len(inputs[0].shape) != 4:
        got = ", ".join(f"{i.name} {i.type} rank {len(i.shape)}" for i in inputs)
        raise ContractError(
            f"{path}: input must be `image` uint8 (N, H, W, 3), got {got}; export with `python -m training export`"
        )
    if inputs[0].shape[3] != 3:
        raise ContractError(f"{path}: input `image` must end with 3 channels (RGB), got shape {inputs[0].shape}")
    mask = [o for o in outputs if o.name == "mask"]
    if not mask or mask[0].type != "tensor(uint8)" or len(mask[0].shape) != 3:
        raise ContractError(
            f"{path}: output `mask` uint8 (N, H, W) is missing; export with `python -m training export`"
        )
