"""SSD300-VGG16's weights: the published ones (the registry), where they are fetched from, reading any source of
weights safely, and starting a model from them, for the same classes or (fine-tuning) for others.

Sources: a training checkpoint directory, an extracted zoo directory, or a zoo tarball (a path or an http(s)/file
URL), read without running code from them (:func:`cv.detection.engine.checkpoint.load`); tarballs through
:mod:`cv.detection.utils.hub` (cached, checksum verified where one is known, extraction size-capped).
"""
import os
import sys

from cv.detection.data.coco import COCO_LABEL_NAMES, COCO_NUM_CLASSES
from cv.detection.engine import checkpoint
from cv.detection.models.transfer import transfer
from cv.detection.utils import hub

# Published weights, as data. The backbone weights are the Caffe VGG16 of the original SSD release (as converted
# by amdegroot/ssd.pytorch), which expects 0-255 BGR-mean-subtracted input: hence the mean and the 1/255 std of
# SSD300_CONFIG (model.py), which undo the 0-1 scaling of the input tensors.
WEIGHTS = {
    "coco": {
        "url": "https://oneflow-public.oss-cn-beijing.aliyuncs.com/model_zoo/flowvision/detection/ssd/ssd300_vgg16.tar.gz",
        "num_classes": 91,
        "box_ap": 25.1,
        "dataset": "COCO val2017",
    },
    "vgg16_backbone": {
        "url": "https://oneflow-public.oss-cn-beijing.aliyuncs.com/model_zoo/flowvision/detection/ssd/vgg16_amdegroot.tar.gz",
    },
}

# Where the published weights are downloaded from can be changed (a mirror, or file:///path/to/the.tar.gz).
URL_ENV = {"coco": "SSD300_VGG16_URL", "vgg16_backbone": "SSD300_VGG16_BACKBONE_URL"}
PRETRAINED_URL_ENV = URL_ENV["coco"]
# The largest weights download or extraction accepted: SSD300-VGG16's weights are 143 MB (float32, 91 classes), a
# training checkpoint with SGD momentum twice that. A tarball that unpacks to more is refused as a likely
# decompression bomb; raise the limit for other models with this variable (in MB).
MAX_WEIGHTS_MB_ENV = "SSD300_VGG16_MAX_WEIGHTS_MB"
MAX_WEIGHTS_MB = 600


def max_weights_bytes():
    text = os.environ.get(MAX_WEIGHTS_MB_ENV, "")
    try:
        megabytes = float(text) if text.strip() else MAX_WEIGHTS_MB
    except ValueError:
        raise ValueError(f"{MAX_WEIGHTS_MB_ENV}={text!r} is not a number of megabytes") from None
    return int(megabytes * 1e6)


def weights_url(name):
    """The address of the published weights ``WEIGHTS[name]`` (``$SSD300_VGG16_URL`` or
    ``$SSD300_VGG16_BACKBONE_URL`` if set)."""
    return os.environ.get(URL_ENV[name]) or WEIGHTS[name]["url"]


def load_weights(name, progress=True):
    """The state dict of the published weights ``WEIGHTS[name]``, fetched once into the flowvision cache (see
    :func:`load_source`)."""
    return load_source(weights_url(name), progress=progress)[0]


def load_source(source, sha256=None, progress=True):
    """``(payload, meta)`` of a checkpoint directory, an extracted zoo directory, or a zoo tarball (a path or an
    http(s)/file URL), read without running code from it (:func:`cv.detection.engine.checkpoint.load`). Tarballs go
    through :mod:`cv.detection.utils.hub` (cached, checksum verified where one is known, extraction size-capped).

    ``meta`` describes the training data (``label_names``, ``label_to_category_id``...): our checkpoints hold it,
    published tarballs carry it in :data:`~cv.detection.engine.checkpoint.META_FILE`; None when unknown.
    """
    if not hub.is_url(source) and os.path.isdir(source):
        if sha256:
            raise ValueError(f"--sha256 checks a tarball; {source} is a directory")
        directory = source
    else:
        directory = hub.resolve_weights(source, sha256=sha256, progress=progress, max_bytes=max_weights_bytes())
    payload = checkpoint.load(directory)
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        return payload, payload.get("meta")
    return payload, checkpoint.read_meta(directory)


CLASSIFICATION_KEY = "head.classification_head.module_list.0.weight"


def _per_cell():
    """Default boxes per cell of the first feature map: its classification conv has ``num_classes`` times as many
    output channels."""
    from cv.detection.ssd300_vgg16.model import SSD300_CONFIG

    return 2 + 2 * len(SSD300_CONFIG["aspect_ratios"][0])


def from_state_dict(state, source="the state dict"):
    """An ``ssd300_vgg16`` holding ``state``, its ``num_classes`` read from the first classification conv (which
    predicts ``num_classes`` scores for each of the first map's default boxes per cell).

    Raises ValueError naming ``source`` when ``state`` is not an SSD300-VGG16 state dict, with a summary of the
    missing, unexpected and misshapen keys (OneFlow's own message lists every key).
    """
    from cv.detection.ssd300_vgg16.model import ssd300_vgg16

    per_cell = _per_cell()
    head = state.get(CLASSIFICATION_KEY) if isinstance(state, dict) else None
    if head is None or head.dim() != 4 or head.shape[0] % per_cell:
        found = f"{len(state)} keys, e.g. {', '.join(list(state)[:3])}" if isinstance(state, dict) else type(state)
        raise ValueError(f"{source} is not an SSD300-VGG16 state dict: "
                         + (f"it has no {CLASSIFICATION_KEY}" if head is None else
                            f"{CLASSIFICATION_KEY} has shape {tuple(head.shape)}, expected "
                            f"(num_classes*{per_cell}, 512, 3, 3)") + f" ({found})")
    num_classes = head.shape[0] // per_cell
    model = ssd300_vgg16(num_classes=num_classes)
    expected = model.state_dict()
    problems = []
    for label, keys in (("missing", [k for k in expected if k not in state]),
                        ("unexpected", [k for k in state if k not in expected]),
                        ("wrong shape", [f"{k} {tuple(state[k].shape)} instead of {tuple(v.shape)}"
                                         for k, v in expected.items() if k in state and state[k].shape != v.shape])):
        if keys:
            problems.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    if problems:
        raise ValueError(f"{source} is not an SSD300-VGG16 state dict ({num_classes} classes, going by "
                         f"{CLASSIFICATION_KEY}): " + "; ".join(problems))
    try:
        model.load_state_dict(state, strict=True)  # the final word (dtypes, anything the above missed)
    except Exception as e:
        raise ValueError(f"{source} does not load into ssd300_vgg16(num_classes={num_classes}): {e}") from e
    return model


def label_names(num_classes, meta):
    """Names by label of weights with ``num_classes`` classes: the training run's (a checkpoint of ours, or a
    published tarball's ``meta.json``), else COCO's for a 91-way model, else ``class N``. COCO's ten unused ids
    (``N/A`` in COCO's list) are named ``N/A (COCO id N)``: a detection of one is not mistaken for a class."""
    if meta and meta.get("label_names") and len(meta["label_names"]) == num_classes:
        names = meta["label_names"]
    elif num_classes == COCO_NUM_CLASSES:
        names = COCO_LABEL_NAMES
    else:
        names = ["__background__"] + [f"class {i}" for i in range(1, num_classes)]
    return [f"N/A (COCO id {i})" if name == "N/A" else str(name) for i, name in enumerate(names)]


def known_label_names(state, meta):
    """The names of the classes of ``state`` as recorded (in ``meta``; COCO's for a 91-way head, its unused ids
    ``N/A``), or None when unknown: ``class N`` placeholders must not match a user's class by name."""
    head = state.get(CLASSIFICATION_KEY)
    num_classes = head.shape[0] // _per_cell() if head is not None else 0
    if meta and meta.get("label_names") and len(meta["label_names"]) == num_classes:
        return [str(name) for name in meta["label_names"]]
    return list(COCO_LABEL_NAMES) if num_classes == COCO_NUM_CLASSES else None


def load_into(model, source, label_names_=None, sha256=None, progress=True):
    """Load the weights at ``source`` into ``model`` (freshly built), whatever classes they were trained on
    (:func:`cv.detection.models.transfer.transfer`); the :class:`~cv.detection.models.transfer.TransferReport`.

    ``label_names_``: the model's class names, background first (default: COCO's for 91 classes, else ``class N``):
    classes named as one of the weights' keep that class's scores. Raises ValueError naming ``source`` for weights
    of another architecture.
    """
    payload, meta = load_source(source, sha256=sha256, progress=progress)
    state = checkpoint.model_state(payload)
    if not isinstance(state, dict) or CLASSIFICATION_KEY not in state:
        raise ValueError(f"{source} is not an SSD300-VGG16 state dict (it has no {CLASSIFICATION_KEY})")
    names = label_names_ or (list(COCO_LABEL_NAMES) if model.num_classes == COCO_NUM_CLASSES else
                             ["__background__"] + [f"class {i}" for i in range(1, model.num_classes)])
    return transfer(model, state, known_label_names(state, meta), names, source=source)


def say(message):
    """A line for the user of the Python API (stderr: stdout may carry a program's results)."""
    print(message, file=sys.stderr, flush=True)
