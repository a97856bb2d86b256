"""The Open Inference Protocol: Triton's published client (`tritonclient[http]`) against a real `bentoml serve` of the
trained tiny model, unchanged: readiness, metadata, inference with encoded images (JSON and binary) and raw pixels,
masks equal to /segment's, and the protocol's errors."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import requests
import skimage.data
from contract_model import png_bytes
from PIL import Image

from loadtest.server import served

tc = pytest.importorskip("tritonclient.http")
PHOTOS = [skimage.data.chelsea()[:150, :200], skimage.data.coffee()[::4, ::4], skimage.data.astronaut()[::5, ::5]]


@pytest.fixture(scope="module")
def server(tiny_export):
    with served(tiny_export, SEG_MAX_BATCH_SIZE=4) as proc:
        proc.client = tc.InferenceServerClient(proc.url.removeprefix("http://"))
        yield proc


def segment(server, photo) -> tuple[np.ndarray, str]:
    r = requests.post(server.url + "/segment", files={"image": ("p.png", png_bytes(photo))}, timeout=60)
    assert r.status_code == 200
    return np.asarray(Image.open(io.BytesIO(r.content))), r.headers["Seg-Model"]


def test_server_and_model_ready_and_described(server):
    c = server.client
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("segmentation")
    meta = c.get_server_metadata()
    assert meta["name"] == "segmentation" and "binary_tensor_data" in meta["extensions"]
    model = c.get_model_metadata("segmentation")
    version = segment(server, PHOTOS[0])[1]
    assert model["versions"] == [version] and c.is_model_ready("segmentation", version)
    assert model["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}]  # the model's own
    assert {k: model["parameters"]["image_bytes"][k] for k in ("datatype", "shape")} == {"datatype": "BYTES",
                                                                                       "shape": [-1]}  # fmt: skip
    assert [o["name"] for o in model["outputs"]] == ["mask", "mask_png", "stats", "confidence"]
    assert model["parameters"]["classes"] == ["background", "butterfly", "leaf"]
    assert not c.is_model_ready("segmentation", "another-version")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_encoded_images_of_any_sizes_give_the_segment_masks(server, binary):
    """BYTES [N]: three photos of three sizes in one request, as JSON (base64) or binary tensors."""
    data = [png_bytes(p) for p in PHOTOS]
    tensor = np.array(data if binary else [base64.b64encode(d) for d in data], dtype=object)
    image = tc.InferInput("image", [len(data)], "BYTES")
    image.set_data_from_numpy(tensor, binary_data=binary)
    outputs = [tc.InferRequestedOutput(name, binary_data=binary) for name in ("mask_png", "confidence", "stats")]
    result = server.client.infer("segmentation", [image], outputs=outputs, request_id="r1")
    assert result.get_response()["id"] == "r1"
    pngs, confidence = result.as_numpy("mask_png"), result.as_numpy("confidence")
    assert confidence.shape == (3, 2) and confidence.dtype == np.float32
    for png, photo, conf, stats in zip(pngs, PHOTOS, confidence, result.as_numpy("stats")):
        mask = np.asarray(Image.open(io.BytesIO(png if binary else base64.b64decode(png))))
        want, version = segment(server, photo)
        assert np.array_equal(mask, want) and mask.shape == photo.shape[:2]
        r = requests.post(server.url + "/segment", files={"image": ("p.png", png_bytes(photo))}, timeout=60)
        assert conf[0] == pytest.approx(float(r.headers["Seg-Confidence"]), abs=1e-4)
        doc = __import__("json").loads(stats)
        assert doc["model"] == version and doc["width"] == photo.shape[1]


def test_raw_pixels_and_the_mask_tensor(server):
    """UINT8 [N, H, W, 3] (binary and JSON), the UINT8 mask [N, H, W] of images of one size."""
    pixels = np.stack([PHOTOS[1], PHOTOS[1][::-1]])
    for binary in (True, False):
        image = tc.InferInput("image", list(pixels.shape), "UINT8")
        image.set_data_from_numpy(pixels, binary_data=binary)
        result = server.client.infer("segmentation", [image], outputs=[tc.InferRequestedOutput("mask", binary)])
        masks = result.as_numpy("mask")
        assert masks.shape == pixels.shape[:3] and masks.dtype == np.uint8
        for mask, photo in zip(masks, pixels):
            assert np.array_equal(mask, segment(server, photo)[0])


def test_the_protocols_errors_reach_the_client_in_one_line(server):
    image = tc.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(np.array([png_bytes(PHOTOS[0]), png_bytes(PHOTOS[1])], dtype=object))
    with pytest.raises(tc.InferenceServerException, match="needs images of one size.*mask_png"):
        server.client.infer("segmentation", [image], outputs=[tc.InferRequestedOutput("mask")])
    with pytest.raises(tc.InferenceServerException, match="not served here"):
        server.client.infer("another-model", [image])
    bad = tc.InferInput("image", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"plain text, not a picture"], dtype=object))
    with pytest.raises(tc.InferenceServerException, match="not an image"):
        server.client.infer("segmentation", [bad])
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200  # nothing crashed a worker


def test_requests_built_from_the_metadata_alone(server):
    """A generic client: it reads the input's name, datatype and shape from the model metadata (free dimensions set
    from its data) and sends pixels; and the BYTES form the metadata's parameters declare, encoded images."""
    meta = server.client.get_model_metadata("segmentation")
    (spec,) = meta["inputs"]
    pixels = PHOTOS[1][None]
    shape = [d if d != -1 else n for d, n in zip(spec["shape"], pixels.shape)]
    assert shape == list(pixels.shape)
    image = tc.InferInput(spec["name"], shape, spec["datatype"])
    image.set_data_from_numpy(pixels.astype(tc.triton_to_np_dtype(spec["datatype"])))
    masks = server.client.infer("segmentation", [image]).as_numpy("mask")
    assert np.array_equal(masks[0], segment(server, PHOTOS[1])[0])
    extension = meta["parameters"]["image_bytes"]
    encoded = tc.InferInput(spec["name"], [1 if d == -1 else d for d in extension["shape"]], extension["datatype"])
    encoded.set_data_from_numpy(np.array([png_bytes(PHOTOS[1])], dtype=object))
    assert np.array_equal(server.client.infer("segmentation", [encoded]).as_numpy("mask")[0], masks[0])
