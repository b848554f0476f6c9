"""The Python API (``cv/detection/ssd300_vgg16/detector.py``): ``Detector`` takes paths, PIL images, RGB arrays or
lists of them and gives what ``infer.sh`` writes (its JSON record and its drawn picture, with either backend); bad
input is one ValueError naming it; it imports after oneflow and through OneFlow's hub."""
import io
import json
import os
import shutil

import numpy as np
import oneflow as flow
import pytest
from PIL import Image

from cv import _runtime
from cv.detection.ssd300_vgg16 import Detections, Detector
from cv.detection.ssd300_vgg16.detector import draw_detections
from tests.conftest import INFER_SH, REPO, fresh_python, run, tiny_ssd

TINY_NAMES = ["__background__", "a", "b", "c", "d"]
SHAPES = ["__background__", "circle", "square", "triangle", "ring", "cross", "star"]


@pytest.fixture(scope="module")
def tiny_detector():
    return Detector(tiny_ssd().eval(), TINY_NAMES, score_threshold=0.0)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Three PNGs of random pixels, of three sizes."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(48, 64), (80, 60), (64, 64)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
        paths.append(str(root / f"{i}.png"))
    return paths


def assert_same(a, b):
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.names == b.names and a.image_size == b.image_size


def test_paths_pil_images_arrays_and_lists_give_the_same_detections(tiny_detector, pictures):
    found = tiny_detector.predict(pictures, batch_size=1)  # a list in, a list out
    assert isinstance(found, list) and len(found) == 3
    for path, by_path in zip(pictures, found):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        assert by_path.path == path and by_path.image_size == (rgb.shape[1], rgb.shape[0])
        assert by_path.boxes.shape == (200, 4) and by_path.boxes.dtype == np.float32 and len(by_path) == 200
        assert by_path.names == [TINY_NAMES[label] for label in by_path.labels] and set(by_path.labels) <= {1, 2, 3, 4}
        assert (np.diff(by_path.scores) <= 0).all()  # best first
        x1, y1, x2, y2 = by_path.boxes.T  # in the image's own pixels
        assert (x1 >= 0).all() and (x2 <= rgb.shape[1]).all() and (y1 >= 0).all() and (y2 <= rgb.shape[0]).all()
        for other in (tiny_detector(path), tiny_detector(Image.open(path)), tiny_detector(rgb),
                      tiny_detector([rgb])[0], tiny_detector(np.ascontiguousarray(rgb[..., ::-1])[..., ::-1])):
            assert isinstance(other, Detections)
            assert_same(other, by_path)
        assert tiny_detector(rgb).path is None and tiny_detector(rgb).to_json()["image"] is None


def test_the_score_threshold_keeps_the_best(pictures):
    detector = Detector(tiny_ssd().eval(), TINY_NAMES, score_threshold=0.0)
    everything = detector(pictures[0])
    cut = float(np.median(everything.scores))
    detector.score_threshold = cut
    kept = detector(pictures[0])
    assert 0 < len(kept) < 200 and len(kept) == (everything.scores >= cut).sum()
    np.testing.assert_array_equal(kept.boxes, everything.boxes[:len(kept)])


def test_to_json_and_draw_are_what_infer_writes(tiny_detector, pictures):
    found = tiny_detector(pictures[1])
    record = found.to_json()
    assert list(record) == ["image", "width", "height", "exif_orientation", "score_threshold", "detections"]
    assert (record["image"], record["width"], record["height"]) == (os.path.abspath(pictures[1]), 60, 80)
    assert record["exif_orientation"] == 1 and record["score_threshold"] == 0.0
    first = record["detections"][0]
    assert first == {"box": [round(float(v), 2) for v in found.boxes[0]], "score": round(float(found.scores[0]), 4),
                     "label": int(found.labels[0]), "name": found.names[0]}
    json.dumps(record)  # JSON-able as it is
    drawn = found.draw()
    original = Image.open(pictures[1]).convert("RGB")
    assert drawn.size == original.size and drawn.mode == "RGB"
    assert np.array_equal(np.asarray(drawn), np.asarray(draw_detections(original, record["detections"])))
    assert not np.array_equal(np.asarray(drawn), np.asarray(original))
    assert str(found).startswith("200 detections (") and str(found).endswith(" ...)")


def test_a_phone_photo_is_detected_upright_from_its_path_or_its_pil_image(tiny_detector, pictures, tmp_path):
    upright = np.asarray(Image.open(pictures[0]).convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6  # turn right to view
    Image.fromarray(np.ascontiguousarray(np.rot90(upright))).save(tmp_path / "phone.png", exif=exif.tobytes())
    by_path, by_image = tiny_detector(str(tmp_path / "phone.png")), tiny_detector(Image.open(tmp_path / "phone.png"))
    assert_same(by_path, tiny_detector(upright))
    assert_same(by_image, by_path)
    assert by_path.exif_orientation == by_image.exif_orientation == 6 and by_path.image_size == (64, 48)
    assert "orientation 6 applied" in by_path.to_json()["note"]


def test_bad_inputs_are_value_errors_naming_them(tiny_detector, pictures, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    expected_image = "expected an HxWx3 uint8 RGB image (for OpenCV's BGR frames pass frame[..., ::-1])"
    for bad, message in [
        (str(tmp_path / "nope.jpg"), f"image {tmp_path / 'nope.jpg'}: no such file"),
        (str(tmp_path), f"image {tmp_path}: no such file (a directory)"),
        (str(tmp_path / "broken.jpg"), f"image {tmp_path / 'broken.jpg'}: cannot be read: cannot identify image "
                                       f"file '{tmp_path / 'broken.jpg'}'"),
        (np.zeros((4, 5), np.uint8), f"image is a NumPy array of shape (4, 5) and dtype uint8: {expected_image}"),
        (np.zeros((4, 5, 3), np.float32),
         f"image is a NumPy array of shape (4, 5, 3) and dtype float32: {expected_image}"),
        (np.zeros((4, 5, 4), np.uint8), f"image is a NumPy array of shape (4, 5, 4) and dtype uint8: {expected_image}"),
        (np.zeros((0, 5, 3), np.uint8), f"image is a NumPy array of shape (0, 5, 3) and dtype uint8: {expected_image}"),
        ([], "images is an empty list: nothing to detect"),
        (None, "image is None: expected an image path, a PIL image or an HxWx3 uint8 RGB NumPy array"),
        ([pictures[0], flow.zeros(3, 4, 4)], "image 1 of 2 is a oneflow.Tensor: expected an image path, a PIL "
                                             "image or an HxWx3 uint8 RGB NumPy array"),
    ]:
        with pytest.raises(ValueError) as e:
            tiny_detector(bad)
        assert str(e.value) == message
    # A PIL image is decoded when detected: a truncated file fails then.
    Image.open(pictures[0]).convert("RGB").save(tmp_path / "whole.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:-200])
    with pytest.raises(ValueError, match="^the PIL image: cannot be read: image file is truncated"):
        tiny_detector(Image.open(tmp_path / "cut.jpg"))


def test_weights_that_are_not_ssd300_vgg16_and_bad_settings_are_value_errors(pictures, tmp_path):
    flow.save(tiny_ssd().state_dict(), str(tmp_path / "tiny"))
    with pytest.raises(ValueError, match=f"^{tmp_path / 'tiny'} is not an SSD300-VGG16 state dict "):
        Detector.load(str(tmp_path / "tiny"), backend="oneflow", device="cpu")
    folder = os.path.dirname(pictures[0])
    with pytest.raises(ValueError, match=f"^{folder} is not a checkpoint: it has no pickled_data"):
        Detector.load(folder, backend="oneflow", device="cpu")
    with pytest.raises(ValueError, match=f"^{pictures[0]} is not a readable tar\\(.gz\\) archive"):
        Detector.load(pictures[0], backend="oneflow", device="cpu")
    for kwargs, message in [
        (dict(source=str(tmp_path / "missing")), f"source {tmp_path / 'missing'}: no such file or directory"),
        (dict(source="s3://bucket/w.tar.gz"), "source s3://bucket/w.tar.gz: no such file or directory (URLs must be "
                                              "http://, https:// or file://)"),
        (dict(backend="tensorrt"), "backend 'tensorrt': expected one of auto, oneflow, onnxruntime, openvino"),
        (dict(precision="float16"), "precision 'float16': expected one of float32, bfloat16, int8"),
        (dict(precision="int8", backend="oneflow"), "precision int8 runs on ONNX Runtime or OpenVINO: use backend "
                                                    "onnxruntime or openvino (or leave backend out)"),
        (dict(precision="bfloat16", backend="onnxruntime"), "precision bfloat16 runs on OpenVINO: use backend "
                                                            "openvino (or leave backend out)"),
        (dict(score_threshold=1.5), "score_threshold must be between 0 and 1, got 1.5"),
    ]:
        with pytest.raises(ValueError) as e:
            Detector.load(**{"source": str(tmp_path / "tiny"), **kwargs})
        assert str(e.value) == message
    with pytest.raises(ValueError, match="^device 'tpu': "):
        Detector.load(str(tmp_path / "tiny"), device="tpu")


def test_oneflow_imported_first_works_and_says_once_what_to_do(pictures):
    """``import oneflow`` before the API, where setup.sh's start-up hook is not installed: it works, and (on a CPU
    with AVX) one warning says how to get the fast CPU kernels (OpenBLAS read its core type when oneflow loaded,
    before our package could set it). With the hook there is no warning: tests/test_runtime.py."""
    out, err = fresh_python("import oneflow\nfrom cv.detection.ssd300_vgg16 import Detector\n"
                      "import cv.detection.ssd300_vgg16.infer\nfrom tests.conftest import tiny_ssd\n"
                      f"print(Detector(tiny_ssd().eval(), {TINY_NAMES!r}, 0.0)({pictures[0]!r}))")
    assert out.strip() == str(Detector(tiny_ssd().eval(), TINY_NAMES, 0.0)(pictures[0]))
    coretype = _runtime.openblas_coretype(_runtime.cpu_flags())
    if coretype:
        assert err.count("UserWarning") == 1 and f"import cv first, or set OPENBLAS_CORETYPE={coretype}" in err
    else:
        assert "UserWarning" not in err


# --- the SSD300 end to end: the API against infer.sh ------------------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """An SSD300-VGG16 checkpoint with seeded random weights and the sample's six shape classes."""
    from cv.detection.ssd300_vgg16 import ssd300_vgg16

    flow.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / "checkpoint"
    flow.save({"model": ssd300_vgg16(num_classes=len(SHAPES)).state_dict(), "meta": {"label_names": SHAPES}},
              str(path))
    return path


@pytest.fixture(scope="module")
def images(sample_dataset, tmp_path_factory):
    """Two sample val images, one as a PNG, and a phone photo (stored turned, EXIF orientation 6)."""
    root = tmp_path_factory.mktemp("api_images")
    files = sorted(os.listdir(sample_dataset / "val2017"))
    shutil.copy(sample_dataset / "val2017" / files[0], root / "a.jpg")
    Image.open(sample_dataset / "val2017" / files[1]).save(root / "b.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = np.asarray(Image.open(sample_dataset / "val2017" / files[2]).convert("RGB"))
    Image.fromarray(np.ascontiguousarray(np.rot90(upright))).save(root / "phone.jpg", quality=95, exif=exif.tobytes())
    return sorted(str(root / f) for f in os.listdir(root))


def jpeg(image):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["oneflow", "onnxruntime"])
def test_the_api_gives_what_infer_sh_writes(backend, weights, images, tmp_path):
    out = tmp_path / "out"
    res = run(["bash", INFER_SH, "--weights", weights, "--images", *images, "--backend", backend, "--batch-size", "2",
               "--score-threshold", "0.02", "--output-dir", out], cwd=tmp_path)
    detector = Detector.load(str(weights), backend=backend, device="cpu", score_threshold=0.02)
    assert (detector.backend, detector.names) == (backend, SHAPES)
    found = detector.predict(images, batch_size=2)
    for path, result in zip(images, found):
        stem = out / os.path.splitext(os.path.basename(path))[0]
        assert result.to_json() == json.loads((stem.with_suffix(".json")).read_text())
        assert jpeg(result.draw()) == (stem.with_suffix(".jpg")).read_bytes()
        assert f"{path}: {result}\n" in res.stdout
    assert found[-1].exif_orientation == 6 and sum(map(len, found)) > 0
    # In memory (arrays, and the phone photo as a PIL image with its EXIF), in the same batches: the same.
    in_memory = [Image.open(p) if r.exif_orientation != 1 else np.asarray(Image.open(p).convert("RGB"))
                 for p, r in zip(images, found)]
    for again, result in zip(detector.predict(in_memory, batch_size=2), found):
        assert_same(again, result)
        assert again.to_json()["detections"] == result.to_json()["detections"]


@pytest.mark.slow
def test_oneflow_hub_gives_a_detector(weights, images):
    """``flow.hub.load(repo, "detector", weights, source="local")``: oneflow necessarily imported first."""
    out, _ = fresh_python("import oneflow as flow\n"
                      f"det = flow.hub.load({REPO!r}, 'detector', {str(weights)!r}, source='local', backend='oneflow', "
                      "score_threshold=0.02)\n"
                      f"print(type(det).__name__, det.backend, det({images[0]!r}).to_json()['detections'][:3])",
                      cwd="/")
    detector = Detector.load(str(weights), backend="oneflow", device="cpu", score_threshold=0.02)
    expected = detector(images[0]).records()[:3]
    name, backend, found = out.strip().splitlines()[-1].split(" ", 2)
    assert (name, backend) == ("Detector", "oneflow") and found == str(expected) and expected
