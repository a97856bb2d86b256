"""The data path shared by the service, predict, Ray and the Python API: geometry, shape buckets, tiles."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from contract import ModelMeta
from serving import pipeline


def meta(dynamic: bool, size=(96, 128)) -> ModelMeta:
    return ModelMeta(classes=("a", "b", "c"), colours=((0, 0, 0),) * 3, input_size=size, dynamic_hw=dynamic)


@pytest.mark.parametrize(
    "size_wh,scaled,input_hw",
    [
        ((480, 360), (96, 128), (96, 128)),  # the training aspect: exactly the training size
        ((360, 480), (128, 96), (128, 96)),  # portrait: the transposed bucket
        ((1920, 1080), (96, 171), (96, 192)),  # 16:9: short side 96, padded to 32
        ((50, 40), (96, 120), (96, 128)),  # small images are scaled up to the training scale
    ],
)
def test_any_size_models_keep_the_aspect_at_training_scale(size_wh, scaled, input_hw):
    p = pipeline.plan(meta(True), size_wh)
    assert (p.scaled_hw, p.input_hw, p.inputs, p.tiled) == (scaled, input_hw, 1, False)


def test_panoramas_and_tile_true_cut_training_size_tiles_at_training_scale():
    p = pipeline.plan(meta(True), (4000, 600))  # 96 x 640 at training scale: over twice the training area
    assert p.tiled and p.scaled_hw == (96, 640) and p.input_hw == (96, 128) and p.inputs > 5
    assert pipeline.plan(meta(True), (480, 360), tile=True).tiled


def test_fixed_size_models_squish_and_tile_at_full_resolution():
    m = meta(False, (64, 64))
    assert pipeline.plan(m, (300, 200)) == pipeline.Plan((300, 200), (64, 64), (64, 64), 1)
    p = pipeline.plan(m, (300, 200), tile=True)
    assert p.tiled and p.scaled_hw == (200, 300) and p.input_hw == (64, 64)
    assert (
        pipeline.plan(m, (300, 200), tile_above=50_000).tiled
        and not pipeline.plan(m, (300, 200), tile_above=70_000).tiled
    )


def test_jobs_pad_crop_and_upsample_back_to_the_image_size():
    m = meta(True)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 330, 3), np.uint8))
    job = pipeline.Job(m, img, pipeline.plan(m, img.size))
    (chunk,) = list(job.chunks(8))
    (x,) = chunk
    assert x.shape == (96, 160, 3)  # 96 x 158 at training scale, padded to 160
    probs = np.zeros((3, 96, 160), np.float32)
    probs[1] = 1.0
    probs[2, :, 158:] = 2.0  # the padding says class 2: it must be cropped away before upsampling
    job.add([(probs.argmax(0).astype(np.uint8), probs)])
    mask = job.mask()
    assert mask.shape == (200, 330) and (mask == 1).all()
    assert job.class_pixels(3).tolist() == [0, 200 * 330, 0]  # counted at 96 x 158, scaled to the image's area


def test_class_pixels_share_follows_the_decision_and_sums_to_the_image_area():
    m = meta(False, (64, 64))
    img = Image.new("RGB", (128, 96))
    job = pipeline.Job(m, img, pipeline.plan(m, img.size))
    ids = np.zeros((64, 64), np.uint8)
    ids[:, 48:] = 2  # a quarter of the decided pixels are class 2
    job.add([(ids, None)])
    assert job.mask().shape == (96, 128)
    assert job.class_pixels(3).tolist() == [128 * 96 * 3 / 4, 0, 128 * 96 / 4]


def test_class_pixels_count_the_same_with_few_and_many_classes():
    """Up to 16 classes are counted a comparison per class, more by bincount: the same counts either way."""
    rng = np.random.default_rng(3)
    for n in (3, 16, 17, 40):
        m = ModelMeta(classes=tuple(f"c{i}" for i in range(n)), colours=((0, 0, 0),) * n, input_size=(32, 48))
        img = Image.new("RGB", (96, 64))
        job = pipeline.Job(m, img, pipeline.plan(m, img.size))
        ids = rng.integers(0, n, (32, 48)).astype(np.uint8)
        job.add([(ids, None)])
        job.mask()
        want = np.bincount(ids.ravel(), minlength=n) * (96 * 64 / ids.size)
        assert job.class_pixels(n).tolist() == want.tolist(), n


def test_segmenter_batches_equal_shapes_and_keeps_order(tiny_export):
    from serving import Segmenter

    seg = Segmenter.load(tiny_export, "cpu")
    calls = []
    run = seg.runtime.run_scores
    seg.runtime.run_scores = lambda b: calls.append(b.shape) or run(b)
    rng = np.random.default_rng(1)
    images = [
        Image.fromarray(rng.integers(0, 256, s, np.uint8))
        for s in [(64, 64, 3), (90, 60, 3), (32, 32, 3), (120, 80, 3)]
    ]
    masks = seg.predict_many(images, batch_size=8)
    assert [m.shape for m in masks] == [(64, 64), (90, 60), (32, 32), (120, 80)]
    assert sorted(calls) == [(2, 64, 64, 3), (2, 96, 64, 3)]  # two shape buckets, one batch each
    one = [seg.predict(im) for im in images]
    assert all(np.array_equal(a, b) for a, b in zip(masks, one))


@pytest.mark.parametrize("exif_rotation", [1, 6])
def test_large_jpegs_decode_reduced_to_twice_the_model_scale_and_mask_at_upload_size(exif_rotation):
    """A JPEG far above the model's scale is decoded reduced by libjpeg, never below twice that scale;
    the model input matches a full decode within JPEG noise and the mask keeps the upload's size."""
    import io

    import skimage.data

    from serving import imaging

    photo = Image.fromarray(skimage.data.astronaut()).resize((1024, 768))
    exif = photo.getexif()
    exif[0x0112] = exif_rotation
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90, exif=exif)
    data = buf.getvalue()
    m = meta(True)
    im = imaging.open_image(data, max_bytes=10**8, max_pixels=10**8)
    plan = pipeline.plan(m, imaging.displayed_size(im, data))
    want_w, want_h = pipeline.decode_size(plan)
    reduced = imaging.load_rgb(im, data, (want_w, want_h))
    full = imaging.load_rgb(imaging.open_image(data, max_bytes=10**8, max_pixels=10**8), data)
    assert full.size == plan.size_wh == ((1024, 768) if exif_rotation == 1 else (768, 1024))
    assert want_w <= reduced.size[0] < full.size[0] and want_h <= reduced.size[1] < full.size[1]
    a, b = pipeline.Job(m, reduced, plan), pipeline.Job(m, full, plan)
    diff = np.abs(a.single_input.astype(int) - b.single_input.astype(int))
    assert a.single_input.shape == b.single_input.shape and diff.mean() < 1.0
    probs = np.random.default_rng(0).random((1, 3, *plan.input_hw), dtype=np.float32)
    a.add([(probs[0].argmax(axis=0).astype(np.uint8), probs[0])])
    assert a.mask().shape == (plan.size_wh[1], plan.size_wh[0])
