"""Entry points for OneFlow's hub (``flow.hub.load``, as torch.hub), e.g. from a local clone::

    import oneflow as flow
    model = flow.hub.load("/path/to/this/repository", "ssd300_vgg16", source="local", pretrained=True)

``pretrained=True`` downloads the zoo's COCO weights (``$SSD300_VGG16_URL`` overrides the address); see
:func:`cv.detection.ssd300_vgg16.ssd300_vgg16` for every argument.
"""
from cv.detection.ssd300_vgg16 import ssd300_vgg16  # noqa: F401

dependencies = ["oneflow", "flowvision", "numpy", "PIL", "faster_coco_eval", "tqdm"]
