"""SSD300-VGG16 in an application: from weights and images to named boxes in one object.

    from cv.detection.ssd300_vgg16 import Detector
    det = Detector.load("zoo")           # or a checkpoint directory, a zoo tarball (path or URL)
    result = det("street.jpg")           # also a PIL image, an HxWx3 uint8 RGB array, or a list of them
    print(result)                        # e.g. "2 detections (person 0.87, car 0.41)"
    result.draw().save("street_boxes.jpg")

:class:`Detector` loads weights as ``infer.sh`` does (the same function), runs the network with OneFlow, ONNX
Runtime (float32 or int8) or OpenVINO (float32, bfloat16 or int8), and returns a :class:`Detections` per image:
boxes in that image's pixels, scores, label ids and names, and ``to_json()`` / ``draw()`` giving exactly the record
and the picture ``infer.sh`` writes (``infer.sh`` runs its images and video frames through this class).

Arrays are RGB. A frame from OpenCV (``cv2.imread``, ``VideoCapture.read``) is BGR: pass ``frame[..., ::-1]`` (a
view, no copy); there is no ``bgr`` flag, so an array always means one thing.
"""
import colorsys
import os

import numpy as np
import oneflow as flow
from PIL import Image, ImageDraw

from cv.detection.data.base import as_rgb, load_rgb
from cv.detection.data.transforms import to_chw_float
from cv.detection.engine import checkpoint as ckpt
from cv.detection.ssd300_vgg16.weights import from_state_dict, label_names, load_source, weights_url
from cv.detection.utils import hub, pipeline

EXIF_ORIENTATION = 0x0112
BACKENDS = ("auto", "oneflow", "onnxruntime", "openvino")
PRECISIONS = ("float32", "bfloat16", "int8")


# --- weights --------------------------------------------------------------------------------------------------

def check_source(source, name="source"):
    """``source`` if it can be loaded from (a URL, or a path that exists); ValueError naming ``name`` otherwise."""
    if not hub.is_url(source) and not os.path.exists(source):
        raise ValueError(f"{name} {source}: no such file or directory"
                         + (" (URLs must be http://, https:// or file://)" if "://" in source else ""))
    return source


def load_model(source, sha256=None, device="cpu"):
    """``(model in eval mode, label_names, meta)`` from a checkpoint directory, a zoo directory, or a tarball
    path/URL, read without running code from it. ``meta`` is the training metadata (None when unknown)."""
    payload, meta = load_source(source, sha256=sha256)
    model = from_state_dict(ckpt.model_state(payload), source)
    return model.to(device).eval(), label_names(model.num_classes, meta), meta


def choose_backend(backend, precision, device, prefix=""):
    """The backend that runs the network: ``backend``, or for ``"auto"`` (or None) OpenVINO for bfloat16, ONNX Runtime
    on the CPU or for int8 (the fastest whose detections are proven equal to OneFlow's; int8's are not, README
    "Speed"), OneFlow on a GPU. ValueError for combinations that cannot run, naming the settings (``prefix`` "--": as
    flags); :class:`cli.UserError` saying how to install OpenVINO when it is chosen and missing."""
    if backend == "oneflow" and precision == "int8":
        raise ValueError(f"{prefix}precision int8 runs on ONNX Runtime or OpenVINO: use {prefix}backend onnxruntime "
                         f"or openvino (or leave {prefix}backend out)")
    if backend in ("oneflow", "onnxruntime") and precision == "bfloat16":
        raise ValueError(f"{prefix}precision bfloat16 runs on OpenVINO: use {prefix}backend openvino (or leave "
                         f"{prefix}backend out)")
    if backend in (None, "auto"):
        backend = ("openvino" if precision == "bfloat16" else
                   "onnxruntime" if device.type == "cpu" or precision == "int8" else "oneflow")
    if backend in ("onnxruntime", "openvino") and device.type != "cpu":
        raise ValueError(f"{prefix}backend {backend} runs on the CPU; drop {prefix}device"
                         + (f" or use {prefix}backend oneflow" if precision == "float32" else ""))
    if backend == "openvino":
        from cv.detection.deploy.openvino_backend import require_openvino

        require_openvino()
    return backend


def exported_network(model, precision="float32", calibration_data=None, calibration_images=16):
    """The ONNX file of ``model``'s network for ``precision``: its float32 export (float32 and bfloat16), or for
    ``int8`` its quantization calibrated on ``calibration_images`` images of ``calibration_data`` (a COCO-format root
    or a folder of images; default the sample dataset), each made once and cached in ``$FLOWVISION_CACHE/onnx``."""
    from cv.detection.deploy.onnx_backend import cached_export

    cache = os.path.join(hub.cache_dir(), "onnx")
    if precision != "int8":
        return cached_export(model, cache)
    from cv.detection.deploy.quantize import cached_quantized_export, calibration_images as pick_images
    from cv.detection.ssd300_vgg16 import SAMPLE_DATA

    source = calibration_data
    if source is None:
        if not os.path.isdir(os.path.join(SAMPLE_DATA, "train2017")):
            from cv.detection.data.sample import make_sample_dataset

            make_sample_dataset(SAMPLE_DATA)
        source = SAMPLE_DATA
        print(f"calibration images: the sample dataset's ({SAMPLE_DATA}); for a model trained on other data, give "
              "--calibration-data with images of that data", flush=True)
    return cached_quantized_export(model, cache, pick_images(source, calibration_images),
                                   log=lambda m: print(m, flush=True))


def exported_detector(model, backend="onnxruntime", precision="float32", calibration_data=None,
                      calibration_images=16):
    """``model`` with its network (:func:`exported_network`) run by ``backend``: ``"onnxruntime"`` (float32, int8)
    or ``"openvino"`` (float32, bfloat16, int8). Its ``precision`` attribute is what runs (OpenVINO runs float32 for
    bfloat16 on a CPU without it, saying so)."""
    path = exported_network(model, precision, calibration_data, calibration_images)
    if backend == "openvino":
        from cv.detection.deploy.openvino_backend import OpenVinoSSD

        return OpenVinoSSD(model, path, precision, log=lambda m: print(m, flush=True))
    from cv.detection.deploy.onnx_backend import OnnxRuntimeSSD

    return OnnxRuntimeSSD(model, path)


# --- images in ------------------------------------------------------------------------------------------------

def read_as_seen(path):
    """``(RGB image as a viewer shows it, its EXIF orientation)``. Phone photos store their pixels sideways with
    an EXIF orientation (1: as stored, 6: turn right, ...); users see, and expect boxes on, the turned image.
    OSError (from :func:`load_rgb`) when the file cannot be read."""
    try:
        with Image.open(path) as img:
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        orientation = 1  # load_rgb says what is wrong with the file
    return load_rgb(path, exif_transpose=True), orientation if orientation in range(1, 9) else 1


class _Picture:
    """One input made ready: ``pixels`` (PIL RGB image or HxWx3 uint8 array), ``path`` or None, EXIF orientation."""

    def __init__(self, pixels, path=None, orientation=1):
        self.pixels, self.path, self.orientation = pixels, path, orientation

    @property
    def size(self):
        return self.pixels.size if isinstance(self.pixels, Image.Image) else self.pixels.shape[1::-1]


def _describe(x):
    if isinstance(x, np.ndarray):
        return f"a NumPy array of shape {x.shape} and dtype {x.dtype}"
    return f"a {type(x).__module__}.{type(x).__name__}" if type(x).__module__ != "builtins" else repr(x)[:60]


def _check(x, name):
    """ValueError naming ``name`` unless ``x`` is something :meth:`Detector.predict` takes; a path must exist."""
    if isinstance(x, (str, os.PathLike)):
        if not os.path.isfile(x):
            raise ValueError(f"{name} {os.fspath(x)}: no such file" + (" (a directory)" if os.path.isdir(x) else ""))
    elif isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3 or 0 in x.shape:
            raise ValueError(f"{name} is {_describe(x)}: expected an HxWx3 uint8 RGB image (for OpenCV's BGR frames "
                             "pass frame[..., ::-1])")
    elif not isinstance(x, Image.Image):
        raise ValueError(f"{name} is {_describe(x)}: expected an image path, a PIL image or an HxWx3 uint8 RGB "
                         "NumPy array")


def _read(x):
    """``(x, its _Picture, None)``, or ``(x, None, the OSError)`` when the file cannot be read."""
    try:
        return x, _picture(x), None
    except OSError as e:
        return x, None, e


def _picture(x):
    """:class:`_Picture` of an input (ValueError if it is not an image); OSError if a file cannot be read."""
    if isinstance(x, (str, os.PathLike)):
        pixels, orientation = read_as_seen(x)
        return _Picture(pixels, os.fspath(x), orientation)
    _check(x, "image")
    if isinstance(x, Image.Image):
        orientation = x.getexif().get(EXIF_ORIENTATION, 1)
        return _Picture(as_rgb(x, exif_transpose=True), None, orientation if orientation in range(1, 9) else 1)
    return _Picture(x)


# --- detections out -------------------------------------------------------------------------------------------

def colour(label):
    """A stable, distinct colour per label (golden-angle hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image, detections):
    """A copy of the PIL RGB ``image`` with ``detections`` (records as :meth:`Detections.records` gives) drawn:
    a box and a "name score" tag per detection, coloured by label."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    for d in detections:
        x1, y1, x2, y2 = d["box"]
        c = colour(d["label"])
        draw.rectangle([x1, y1, x2, y2], outline=c, width=max(2, round(min(image.size) / 200)))
        text = f"{d['name']} {d['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        ty = y1 - (bottom - top) - 4 if y1 - (bottom - top) - 4 >= 0 else y1
        draw.rectangle([x1, ty, x1 + right - left + 4, ty + bottom - top + 4], fill=c)
        draw.text((x1 + 2, ty + 1), text, fill=(0, 0, 0))
    return image


def _kept(output, score_threshold):
    """``(boxes, scores, labels)`` of one network output as NumPy arrays, those scoring ``score_threshold`` or
    more (the output is sorted by score, so they stay in that order)."""
    boxes, scores, labels = (output[k].numpy() for k in ("boxes", "scores", "labels"))  # once: tensor ops cost more
    keep = scores >= score_threshold
    return boxes[keep].reshape(-1, 4), scores[keep], labels[keep]


def _name(names, label):
    return names[int(label)] if int(label) < len(names) else f"class {int(label)}"


def _records(boxes, scores, labels, names):
    return [{"box": [round(float(v), 2) for v in box], "score": round(float(s), 4), "label": int(label), "name": name}
            for box, s, label, name in zip(boxes, scores, labels, names)]


def as_records(output, names, score_threshold):
    """One network output's detections above ``score_threshold`` as :meth:`Detections.records` gives them."""
    boxes, scores, labels = _kept(output, score_threshold)
    return _records(boxes, scores, labels, [_name(names, label) for label in labels])


class Detections:
    """What :class:`Detector` found in one image.

    Attributes:
        boxes: ``[N, 4]`` float32, ``x1, y1, x2, y2`` in pixels of the image as given (for a path: as a viewer
            shows it, its EXIF orientation applied), best score first.
        scores: ``[N]`` float32; labels: ``[N]`` int64 label ids; names: the N label names.
        image_size: ``(width, height)``; path: the image's path, or None for an image given in memory.
        exif_orientation: the EXIF orientation applied (1: none); score_threshold: the lowest score reported.
    """

    def __init__(self, boxes, scores, labels, label_names, picture, score_threshold):
        self.boxes, self.scores, self.labels = boxes, scores, labels
        self.names = [_name(label_names, label) for label in labels]
        self.image_size = tuple(int(v) for v in picture.size)
        self.path, self.exif_orientation = picture.path, picture.orientation
        self.score_threshold = score_threshold
        self._pixels = picture.pixels

    def __len__(self):
        return len(self.labels)

    def __str__(self):
        """``"3 detections (circle 0.91, star 0.52, ring 0.31)"``: the count and the best five."""
        records = self.records()
        summary = ", ".join(f"{d['name']} {d['score']:.2f}" for d in records[:5]) + (" ..." if len(records) > 5
                                                                                     else "")
        return f"{len(records)} detection{'s' * (len(records) != 1)}" + (f" ({summary})" if records else "")

    def __repr__(self):
        return f"<Detections {self.path or 'image'} {self.image_size[0]}x{self.image_size[1]}: {self}>"

    def records(self):
        """The detections as JSON-able dicts ``{"box", "score", "label", "name"}`` (box rounded to 0.01 px, score
        to 1e-4), as in ``infer.sh``'s files."""
        return _records(self.boxes, self.scores, self.labels, self.names)

    def to_json(self):
        """The JSON-able record ``infer.sh`` writes for this image (``<name>.json``): ``image`` (absolute path, or
        None), ``width``, ``height``, ``exif_orientation``, ``score_threshold``, ``detections`` and, for a turned
        image, a ``note`` saying so."""
        width, height = self.image_size
        record = {"image": os.path.abspath(self.path) if self.path is not None else None, "width": width,
                  "height": height, "exif_orientation": self.exif_orientation,
                  "score_threshold": self.score_threshold, "detections": self.records()}
        if self.exif_orientation != 1:
            record["note"] = ("boxes are in the orientation the image is viewed in (its EXIF orientation "
                              f"{self.exif_orientation} applied); width and height too")
        return record

    def draw(self):
        """The image (as detected on) with the boxes drawn as ``infer.sh`` draws them: a new PIL RGB image."""
        pixels = self._pixels
        image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(np.ascontiguousarray(pixels))
        return draw_detections(image, self.records())


# --- the detector ---------------------------------------------------------------------------------------------

def _check_threshold(score_threshold):
    if not 0 <= score_threshold <= 1:
        raise ValueError(f"score_threshold must be between 0 and 1, got {score_threshold}")


class Detector:
    """SSD300-VGG16 from images to :class:`Detections`. Make one with :meth:`load`; call it (or :meth:`predict`)
    on an image path, a PIL image, an ``HxWx3`` uint8 RGB NumPy array, or a list of them.

    Args:
        network: the model in eval mode, or a stand-in called like it (``OnnxRuntimeSSD``, ``OpenVinoSSD``): a list
            of ``[3, H, W]`` float 0-1 tensors -> ``[{"boxes", "scores", "labels"}]``, boxes in each tensor's pixels.
        names: names by label id (:func:`label_names`).
        score_threshold: detections scoring below it are not reported (0-1).
        device: where input tensors go (the network's device).
        backend, precision: what runs the network, for messages.
    """

    def __init__(self, network, names, score_threshold=0.3, device="cpu", backend="oneflow", precision="float32"):
        _check_threshold(score_threshold)
        self.network, self.names, self.score_threshold = network, list(names), score_threshold
        self.device = device if isinstance(device, flow.device) else flow.device(device)
        self.backend, self.precision = backend, precision

    @classmethod
    def load(cls, source="zoo", backend="auto", precision="float32", device=None, score_threshold=0.3,
             calibration_data=None):
        """A Detector with the weights at ``source``: ``"zoo"`` (the published COCO weights, fetched once into the
        cache; ``$SSD300_VGG16_URL`` overrides the address), a checkpoint directory of ``train.sh``, an extracted
        zoo directory, or a zoo tarball (path or http(s)/file URL). Nothing in the weights is run.

        ``backend``: ``"auto"`` (ONNX Runtime on the CPU, OneFlow on a GPU, OpenVINO for bfloat16), ``"oneflow"``,
        ``"onnxruntime"`` or ``"openvino"`` (both CPU only, the network exported once per weights, cached in
        ``$FLOWVISION_CACHE/onnx``). ``precision``: ``"float32"``, ``"bfloat16"`` (OpenVINO; float32, with a
        message, on a CPU without BF16) or ``"int8"`` (ONNX Runtime or OpenVINO, activations calibrated on
        ``calibration_data``: images like the model's training data, default the sample dataset); ``precision`` of
        the result is what runs. ``device``: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (default: cuda if available).
        ValueError naming the setting or the source when one is wrong; :class:`cli.UserError` if OpenVINO is
        chosen and not installed."""
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        _check_threshold(score_threshold)
        try:
            device = flow.device(device or ("cuda" if flow.cuda.is_available() else "cpu"))
        except Exception as e:  # OneFlow's RuntimeError for an unknown device type
            raise ValueError(f"device {device!r}: {str(e).strip().splitlines()[-1]}") from None
        backend = choose_backend(backend, precision, device)
        source = weights_url("coco") if source == "zoo" else check_source(os.fspath(source))
        try:
            model, names, _ = load_model(source, device=device)
        except FileNotFoundError as e:  # a directory or file that is not weights at all
            raise ValueError(f"source {source}: not SSD300-VGG16 weights ({e})") from None
        network = model if backend == "oneflow" else exported_detector(model, backend, precision, calibration_data)
        return cls(network, names, score_threshold, device, backend, getattr(network, "precision", precision))

    @property
    def model(self):
        """The OneFlow SSD module (which, with ONNX Runtime or OpenVINO, only pre- and post-processes)."""
        return getattr(self.network, "model", self.network)

    def __call__(self, images, batch_size=4):
        return self.predict(images, batch_size)

    def __repr__(self):
        return (f"<Detector SSD300-VGG16, {len(self.names) - 1} classes, {self.backend} {self.precision} on "
                f"{self.device}, score_threshold {self.score_threshold}>")

    def predict(self, images, batch_size=4):
        """:class:`Detections` of ``images``: one image (a path, a PIL image, an ``HxWx3`` uint8 RGB array) gives
        one, a list gives a list, ``batch_size`` images per forward pass. A path is read as a viewer shows it (EXIF
        orientation applied), and so is a PIL image with an EXIF orientation; arrays are RGB as given.
        ValueError naming the input for anything else, an unreadable file, or an empty list."""
        single = not isinstance(images, (list, tuple))
        inputs = [images] if single else list(images)
        if not inputs:
            raise ValueError("images is an empty list: nothing to detect")
        for i, x in enumerate(inputs):
            _check(x, "image" if single else f"image {i} of {len(inputs)}")
        results = list(self.stream(inputs, batch_size))
        return results[0] if single else results

    def stream(self, images, batch_size=4, skip=None):
        """Yield the :class:`Detections` of each of ``images`` (an iterable of what :meth:`predict` takes), reading
        and detecting ``batch_size`` at a time: for many images, or to act on each as soon as it is done. A file
        that cannot be read is a ValueError naming it, or with ``skip`` is left out after ``skip(path, error)``
        (``error``: the OSError saying why). The next ``batch_size`` images are read and decoded in a background
        thread while the network runs on the current ones; ``skip`` is called in the caller's thread."""
        batch, inputs = [], 0
        with pipeline.Ahead(map(_read, images), depth=batch_size, name="read images") as read:
            for x, picture, error in read:
                if error is None:
                    batch.append(picture)
                elif skip is None:
                    name = f"image {os.fspath(x)}" if isinstance(x, (str, os.PathLike)) else "the PIL image"
                    raise ValueError(f"{name}: cannot be read: {error}") from None
                else:
                    skip(x, error)
                inputs += 1
                if inputs == batch_size:  # batches of inputs, as without read-ahead: the same network batches
                    yield from self._detect(batch)
                    batch, inputs = [], 0
        yield from self._detect(batch)

    def _detect(self, pictures):
        if not pictures:
            return []
        with flow.no_grad():
            outputs = self.network([flow.tensor(to_chw_float(p.pixels), device=self.device) for p in pictures])
        return [Detections(*_kept(out, self.score_threshold), self.names, p, self.score_threshold)
                for p, out in zip(pictures, outputs)]
