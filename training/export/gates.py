"""The parity gate: ONNX Runtime against fastai's own output, at the training size (`get_preds`) and at other
shapes (its model), each at batch sizes other than the traced one.

The rule: the reference is the model in fp32, whatever precision it trained in (a Learner's mixed-precision
callbacks are set aside); every pixel's class is the same, except numerical ties (fastai's two best probabilities
within TIE_TOL); and no probability differs by more than PROB_TOL. A sound export differs by float32 noise: 9e-6 on
a real CamVid model at 360x480 (after training.model.standardize's reductions were made per row: before, 1.3e-2).
A wrong normalisation, a missing layer or a wrong resize moves probabilities by 1e-1 and more, and flips pixels that
are no tie: tests/training/test_parity.py breaks exports each of these ways and checks they are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ExportError
from .graph import TRACE_BATCH, Tta, as_tta, tta_probs

PARITY_BATCHES = (1, 3)
SHAPE_IMAGES = 16  # held-out images checked at the other shapes (each shape runs PyTorch and ONNX Runtime on them)
# probability gap below which PyTorch and ONNX Runtime may pick either class: the per-image standardisation inside the
# graph (reductions over the whole image, summed in another order) moves probabilities by up to ~5e-4 (the demo, seed
# 1: 5.3e-4, one pixel flipped at a gap of 4.0e-4); a real export error flips thousands of pixels by far more
TIE_TOL = 1e-3
PROB_TOL = 1e-3  # the largest probability difference allowed anywhere: 100x what a sound real export shows
PARITY_IMAGES = 32  # held-out images checked at the training size (the int8 rule scores all of them)


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run(sess, images: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray | None]:
    masks, probs = [], []
    names = [o.name for o in sess.get_outputs()]
    for i in range(0, len(images), batch):
        out = sess.run(None, {"image": images[i : i + batch]})
        masks.append(out[0])
        if "probs" in names:
            probs.append(out[names.index("probs")])
    return np.concatenate(masks), (np.concatenate(probs) if probs else None)


def load_images(paths, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W, 3) uint8: each image squished to `size` with PIL bilinear, as training validation and serving do."""
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)))
    return np.stack(out)


def load_truths(truths, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) uint8: ground-truth masks (class ids) resized to `size` with nearest neighbour, like their images."""
    return np.stack(
        [np.asarray(Image.fromarray(np.asarray(t, np.uint8)).resize((size[1], size[0]), Image.NEAREST)) for t in truths]
    )


def _fastai_probs(learn, paths) -> np.ndarray:
    """fastai's own output for `paths`, through its validation pipeline, in fp32: (N, C, H, W) float32. A Learner
    that still carries a mixed-precision callback (fastai's MixedPrecision, training.precision's Bf16Autocast) is
    run without it, its model in float32: the export is an fp32 graph and is compared with the fp32 model."""
    mixed = [cb for cb in learn.cbs if type(cb).__name__ in ("MixedPrecision", "Bf16Autocast")]
    learn.model.float()
    dl = learn.dls.test_dl([Path(p) for p in paths], bs=4)
    with learn.removed_cbs(mixed):
        preds, _ = learn.get_preds(dl=dl)
    return preds.float().numpy()


def tie_pixels(probs: np.ndarray, tol: float = TIE_TOL) -> np.ndarray:
    """(N, C, H, W) probabilities -> (N, H, W) bool: pixels whose two best classes are within `tol`,
    where the order of float operations (PyTorch vs ONNX Runtime) may decide the argmax either way."""
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) < tol


def check_parity(learn, onnx_path: Path, paths, size, tta=None, mean=None, std=None) -> dict:
    """ONNX Runtime vs fastai on `paths` at batch sizes PARITY_BATCHES.

    `identical` holds when every pixel's class is the same, except numerical ties (fastai's two best
    probabilities within TIE_TOL, far below any real export error), and no probability differs by PROB_TOL or
    more; ties that flip are counted and reported. With test-time augmentation (`tta`) the reference is fastai's
    model in PyTorch through the same passes (graph.tta_probs), as at the other shapes."""
    images, tta = load_images(paths, size), as_tta(tta)
    ref = _eager_probs(learn, images, mean, std, tta) if tta else _fastai_probs(learn, paths)
    row, ok = _compare(session(onnx_path), images, ref)
    return {
        "images": len(paths),
        "batch_sizes": list(PARITY_BATCHES),
        "traced_batch": TRACE_BATCH,
        "tie_tolerance": TIE_TOL,
        "prob_tolerance": PROB_TOL,
        **row,
        "identical": ok,
    }


def _compare(sess, images: np.ndarray, ref: np.ndarray) -> tuple[dict, bool]:
    """ONNX Runtime on `images` at each of PARITY_BATCHES against fastai's probabilities `ref`: agreement,
    tie flips and the largest probability difference, and whether only numerical ties differ (and no probability by
    PROB_TOL or more)."""
    ref_mask, ties = ref.argmax(1).astype(np.uint8), tie_pixels(ref)
    row, ok = {}, True
    for b in PARITY_BATCHES:
        mask, probs = run(sess, images, b)
        differ = mask != ref_mask
        row[f"agreement_b{b}"] = float(1.0 - differ.mean())
        row[f"tie_flips_b{b}"] = int((differ & ties).sum())
        ok &= not (differ & ~ties).any()
        if probs is not None:
            row["max_prob_diff"] = max(row.get("max_prob_diff", 0.0), float(np.abs(probs - ref).max()))
            ok &= row["max_prob_diff"] < PROB_TOL
    return row, bool(ok)


def parity_shapes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """The (H, W) the parity gate checks besides the training size: transposed (or widened, if square),
    odd and not multiples of 32, and larger."""
    h, w = size
    other = (w, h) if h != w else (h, w + 32)
    odd = (max(h * 3 // 4 + 1, 65), max(w * 5 // 4 + 3, 67))  # deep 5x5 kernels need a few pixels at 1/32 scale
    return list(dict.fromkeys([other, odd, (h + 64, w + 96)]))


def _eager_probs(learn, images: np.ndarray, mean, std, tta: Tta = Tta()) -> np.ndarray:
    """fastai's model (as trained, not patched) in PyTorch on (N, H, W, 3) uint8: (N, C, H, W) float32 probabilities,
    averaged over `tta`'s passes as the graph does (graph.tta_probs)."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return tta_probs(learn.model.float().eval(), x, tta).numpy()


def check_shapes(learn, onnx_path: Path, paths, shapes, mean, std, tta=None) -> dict:
    """ONNX Runtime vs fastai's model at each (H, W) of `shapes`, at batch sizes PARITY_BATCHES: the images
    squished to that shape (PIL bilinear); identical masks except numerical ties, as check_parity."""
    sess = session(onnx_path)
    rows, ok = [], True
    for shape in shapes:
        images = load_images(paths, shape)
        row, same = _compare(sess, images, _eager_probs(learn, images, mean, std, as_tta(tta)))
        rows.append({"shape": list(shape), **row})
        ok &= same
    return {"shapes": rows, "identical": bool(ok)}


def parity_gate(learn, fp32: Path, valid, size: tuple[int, int], mean, std, dynamic_hw: bool, tta=None) -> dict:
    """Both parity checks on `fp32`; ExportError (nothing written) unless every mask is identical but for ties and
    no probability differs by PROB_TOL. At most PARITY_IMAGES of `valid` at the training size, SHAPE_IMAGES at the
    other shapes."""
    valid = list(valid)[:PARITY_IMAGES]
    shapes = parity_shapes(size) if dynamic_hw else []
    others = f", its model on {min(len(valid), SHAPE_IMAGES)} of them at " + ", ".join(f"{h}x{w}" for h, w in shapes)
    print(
        f"[3/4] parity: ONNX Runtime vs fastai on {len(valid)} held-out images, batch sizes {PARITY_BATCHES}: "
        f"get_preds at {size[0]}x{size[1]}" + (others if shapes else ""),
        flush=True,
    )
    parity = check_parity(learn, fp32, valid, size, tta, mean, std)
    parity["other_shapes"] = check_shapes(learn, fp32, valid[:SHAPE_IMAGES], shapes, mean, std, tta)
    rows = [parity] + parity["other_shapes"]["shapes"]
    if not (parity["identical"] and parity["other_shapes"]["identical"]):
        worst = min(r[f"agreement_b{b}"] for r in rows for b in PARITY_BATCHES)
        gap = max(r.get("max_prob_diff", 0) for r in rows)
        raise ExportError(
            f"parity failed: ONNX masks match fastai on {worst:.4%} of pixels (need 100 % but for numerical ties) and "
            f"probabilities differ by up to {gap:.1e} (need < {PROB_TOL:g}); nothing written"
        )
    flips = sum(r[f"tie_flips_b{b}"] for r in rows for b in PARITY_BATCHES)
    print(
        "      masks identical on 100 % of pixels at every shape and batch size"
        + (f" but {flips} numerical tie(s) (top-2 gap < {TIE_TOL:g})" if flips else "")
        + f"; largest probability difference {max(r.get('max_prob_diff', 0) for r in rows):.2e}",
        flush=True,
    )
    return parity


def confidence_reference(fp32: Path, images: np.ndarray, truths: np.ndarray | None) -> dict | None:
    """The model's confidence on its held-out images, as the service measures it (contract.metrics): the reference
    the service's drift statistic compares recent answers with, stored with the model. With ground truth, also how
    often the model is wrong on pixels below and above the uncertainty threshold (what the threshold means).
    None when the graph has no `probs` output."""
    from contract.metrics import UNCERTAIN_BELOW, confidence, reference

    masks, probs = run(session(fp32), images, 4)
    if probs is None:
        return None
    top1 = probs.max(axis=1)
    ref = reference([confidence(t)["mean"] for t in top1])
    ref["uncertain_fraction"] = float((top1 < UNCERTAIN_BELOW).mean())
    if truths is not None:
        wrong, low = masks != truths, top1 < UNCERTAIN_BELOW
        ref["error_below"] = float(wrong[low].mean()) if low.any() else None
        ref["error_above"] = float(wrong[~low].mean())
    return ref
