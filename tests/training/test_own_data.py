"""People's own data and models: masks from COCO and LabelMe files, and a fastai Learner saved with learn.export()."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "training", *map(str, args)], capture_output=True, text=True, timeout=600
    )


def _png(w=40, h=30, value=90) -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(b, "PNG")
    return b.getvalue()


def coco(tmp_path, annotations=None, images=None):
    from pycocotools import mask as cocomask

    img_dir = tmp_path / "imgs"
    img_dir.mkdir(exist_ok=True)
    (img_dir / "a.png").write_bytes(_png())
    (img_dir / "b.png").write_bytes(_png(value=20))
    rle_mask = np.zeros((30, 40), np.uint8, order="F")
    rle_mask[20:25, 5:15] = 1
    rle = cocomask.encode(rle_mask)
    rle["counts"] = rle["counts"].decode()
    doc = {
        "images": images
        or [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
        ],
        "categories": [
            {"id": 7, "name": "cat"},
            {"id": 3, "name": "dog"},
        ],  # ids in any order: dog (3) -> 1, cat (7) -> 2
        "annotations": annotations
        or [
            {"id": 1, "image_id": 1, "category_id": 3, "segmentation": [[0, 0, 20, 0, 20, 10, 0, 10]]},
            {
                "id": 2,
                "image_id": 1,
                "category_id": 7,
                "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]],
            },  # overlaps the dog: later wins
            {"id": 3, "image_id": 2, "category_id": 7, "segmentation": rle},  # compressed RLE
        ],
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(doc))
    return path, img_dir


def test_coco_polygons_and_rle_become_index_masks(tmp_path):
    ann, imgs = coco(tmp_path)
    r = _cli("masks", "--coco", ann, "--images", imgs, "--out", tmp_path / "data")
    assert r.returncode == 0, r.stderr
    data = tmp_path / "data"
    assert (data / "codes.txt").read_text().split() == ["background", "dog", "cat"]
    a = np.asarray(Image.open(data / "masks" / "a.png"))
    assert (
        a[2, 2] == 1 and a[8, 15] == 2 and a[12, 25] == 2 and a[25, 35] == 0
    )  # cat painted over the dog where they overlap
    b = np.asarray(Image.open(data / "masks" / "b.png"))
    assert b[22, 10] == 2 and b.sum() == 2 * 50
    from training.data import load_dataset

    ds = load_dataset(data)
    assert ds.layout == "generic" and ds.n_classes == 3 and len(ds.pairs) == 2


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing image", "image of"),
        ("unknown category", "unknown category_id 9"),
        ("outside", "lies outside the 40x30 image"),
        ("malformed", "not valid JSON"),
    ],
)
def test_coco_problems_are_one_line_and_write_nothing(tmp_path, case, needle):
    if case == "missing image":
        ann, imgs = coco(
            tmp_path,
            images=[
                {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                {"id": 2, "file_name": "nope.png", "width": 40, "height": 30},
            ],
        )
    elif case == "unknown category":
        ann, imgs = coco(
            tmp_path, annotations=[{"id": 1, "image_id": 1, "category_id": 9, "segmentation": [[0, 0, 5, 0, 5, 5]]}]
        )
    elif case == "outside":
        ann, imgs = coco(
            tmp_path, annotations=[{"id": 1, "image_id": 1, "category_id": 3, "segmentation": [[0, 0, 90, 0, 90, 10]]}]
        )
    else:
        ann, imgs = coco(tmp_path)
        ann.write_text('{"images": [')
    r = _cli("masks", "--coco", ann, "--images", imgs, "--out", tmp_path / "data")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
    assert not (tmp_path / "data").exists() and not list(tmp_path.glob(".masks-*"))


def test_labelme_shapes_and_embedded_images(tmp_path):
    d = tmp_path / "lm"
    d.mkdir()
    (d / "one.png").write_bytes(_png())
    shapes = [
        {"label": "road", "shape_type": "rectangle", "points": [[0, 20], [40, 30]]},
        {
            "label": "car",
            "shape_type": "polygon",
            "points": [[5, 15], [15, 15], [15, 25], [5, 25]],
        },  # over the road: wins
        {"label": "sign", "shape_type": "circle", "points": [[30, 8], [33, 8]]},
    ]
    (d / "one.json").write_text(
        json.dumps({"imagePath": "one.png", "imageWidth": 40, "imageHeight": 30, "shapes": shapes})
    )
    (d / "two.json").write_text(
        json.dumps(
            {
                "imagePath": "missing.png",
                "imageData": base64.b64encode(_png(value=5)).decode(),
                "imageWidth": 40,
                "imageHeight": 30,
                "shapes": [{"label": "car", "points": [[0, 0], [9, 0], [9, 9]]}],
            }
        )
    )
    r = _cli("masks", "--labelme", d, "--out", tmp_path / "data")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data" / "codes.txt").read_text().split() == ["background", "car", "road", "sign"]
    m = np.asarray(Image.open(tmp_path / "data" / "masks" / "one.png"))
    assert m[27, 30] == 2 and m[20, 10] == 1 and m[8, 30] == 3 and m[2, 2] == 0
    assert np.asarray(Image.open(tmp_path / "data" / "masks" / "two.png"))[1, 6] == 1
    (d / "three.json").write_text(json.dumps({"imagePath": "gone.png", "shapes": []}))
    r = _cli("masks", "--labelme", d, "--out", tmp_path / "data2")
    assert (
        r.returncode == 2 and "three.json: image 'gone.png' not found" in r.stderr and not (tmp_path / "data2").exists()
    )


def test_a_learner_from_learn_export_goes_through_the_same_gates(tmp_path, tiny_dataset):
    """A notebook-style fastai Learner (SegmentationDataLoaders + unet_learner on resnet18), saved with
    learn.export(): the CLI refuses it without --trust-pickle, then exports it with parity checked and
    classes and normalisation read from its DataLoaders; export_learner does the same from a live Learner."""
    import torch
    from fastai.vision.all import Resize, SegmentationDataLoaders, get_image_files, resnet18, unet_learner

    torch.manual_seed(0)
    codes = ["background", "butterfly", "leaf"]
    dls = SegmentationDataLoaders.from_label_func(
        tiny_dataset,
        get_image_files(tiny_dataset / "images"),
        lambda p: tiny_dataset / "masks" / p.name,
        codes=codes,
        item_tfms=Resize(64),
        bs=4,
        valid_pct=0.25,
        seed=0,
    )
    learn = unet_learner(dls, resnet18, pretrained=False, n_out=3)
    learn.path = tmp_path
    learn.export("export.pkl")
    r = _cli(
        "export", "--learner", tmp_path / "export.pkl", "--images", tiny_dataset / "images", "--out", tmp_path / "m"
    )
    assert (
        r.returncode == 2
        and "--trust-pickle" in r.stderr
        and r.stderr.count("\n") == 1
        and not (tmp_path / "m").exists()
    )
    r = _cli(
        "export",
        "--learner",
        tmp_path / "export.pkl",
        "--trust-pickle",
        "--images",
        tiny_dataset / "images",
        "--out",
        tmp_path / "m",
    )
    assert r.returncode == 0, r.stderr[-1500:]
    from serving import Segmenter
    from training.export import export_learner, read_metadata

    meta = read_metadata(tmp_path / "m" / "model.onnx")
    assert json.loads(meta["classes"]) == codes and json.loads(meta["input_size"]) == [64, 64]
    assert json.loads(meta["parity"])["identical"] and len(list((tmp_path / "m" / "samples").iterdir())) == 4
    assert Segmenter.load(tmp_path / "m", "cpu").predict(np.zeros((50, 70, 3), np.uint8)).shape == (50, 70)
    report = export_learner(learn, tmp_path / "live", int8=False)  # a live Learner in a notebook: the same
    assert report.parity["identical"] and (tmp_path / "live" / "model.onnx").is_file()
    # the held-out check (for int8's accuracy rule) is labelled by the Learner's own get_y, live or unpickled
    from contract.metrics import read_check

    for folder in (tmp_path / "m", tmp_path / "live"):
        images, truths, info = read_check(folder)
        assert images.shape[1:] == (64, 64, 3) and truths.shape == images.shape[:3] and info["codes"] == codes
        assert set(np.unique(truths)) <= {0, 1, 2} and truths.any()
