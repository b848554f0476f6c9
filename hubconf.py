"""Entry points for OneFlow's hub (``flow.hub.load``, as torch.hub), e.g. from a local clone::

    import oneflow as flow
    det = flow.hub.load("/path/to/this/repository", "detector", source="local")  # images -> named boxes
    model = flow.hub.load("/path/to/this/repository", "ssd300_vgg16", source="local", pretrained=True)

The zoo's COCO weights are downloaded once (``$SSD300_VGG16_URL`` overrides the address). oneflow is imported
before this repository here, so set ``OPENBLAS_CORETYPE`` as the warning says for the fast CPU kernels.
"""
from cv.detection.ssd300_vgg16 import Detector, ssd300_vgg16  # noqa: F401

dependencies = ["oneflow", "flowvision", "numpy", "PIL", "faster_coco_eval", "tqdm"]


def detector(weights="zoo", **kwargs):
    """A :class:`~cv.detection.ssd300_vgg16.detector.Detector` (call it on image paths, PIL images or RGB arrays)
    with ``weights``: ``"zoo"`` (the published COCO weights), a checkpoint directory, or a zoo tarball path or URL.
    ``kwargs`` go to :meth:`Detector.load` (``backend``, ``precision``, ``device``, ``score_threshold``, ...); the
    weights are not called ``source`` here because ``flow.hub.load`` has its own ``source``."""
    return Detector.load(weights, **kwargs)
