"""SSD300 with a VGG16 trunk, as published in the OneFlow model zoo (COCO box AP 25.1).

Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016 (https://arxiv.org/abs/1512.02325), with the
VGG16 of Simonyan & Zisserman (https://arxiv.org/abs/1409.1556). Module and parameter names match flowvision's
(and torchvision's) ``ssd300_vgg16``, so the zoo's checkpoint loads unchanged: 71 tensors, 35,641,826
parameters for 91 classes.
"""
import warnings

import oneflow as flow
from oneflow import nn

from cv.detection.models.anchors import DefaultBoxGenerator
from cv.detection.models.layers import Conv2d
from cv.detection.models.ssd import SSD, xavier_init
from cv.detection.ssd300_vgg16.weights import load_into, load_weights, say, weights_url

# The paper's SSD300 hyperparameters, all in one place (paper §2.2, §3 and Fig. 2; COCO variant of §3.4).
SSD300_CONFIG = dict(
    size=(300, 300),
    # Per feature map (38, 19, 10, 5, 3, 1): aspect ratios besides 1 -> 4 or 6 default boxes per cell.
    aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
    # COCO scales: smallest 0.07 (21 px), then 0.15 .. 1.05 as in the paper's COCO model.
    scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
    steps=[8, 16, 32, 64, 100, 300],
    image_mean=[0.48235, 0.45882, 0.40784],
    image_std=[1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0],
)


def train_transform():
    """The SSD training augmentation for this model: its input size, and its mean colour (0-1 here, 0-255 for the
    augmentation) as the fill of the zoom-out canvas."""
    from cv.detection.data.transforms import ssd_train_transform

    return ssd_train_transform(SSD300_CONFIG["size"], tuple(round(255 * m) for m in SSD300_CONFIG["image_mean"]))


# F.normalize's default: guards the division where a position's features are all zero.
L2NORM_EPS = 1e-12

# VGG16 ("configuration D"): channels of each 3x3 convolution, "M" for a 2x2 max-pool.
VGG16_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16_features():
    """VGG16's convolutional layers as one ``Sequential`` (torchvision's layer indices, He-initialised)."""
    layers, channels = [], 3
    for v in VGG16_LAYERS:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = Conv2d(channels, v, kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(conv.bias, 0.0)
            layers += [conv, nn.ReLU(inplace=True)]
            channels = v
    return nn.Sequential(*layers)


def _extra_block(in_channels, mid_channels, out_channels, **conv_kwargs):
    return nn.Sequential(
        Conv2d(in_channels, mid_channels, kernel_size=1), nn.ReLU(inplace=True),
        Conv2d(mid_channels, out_channels, kernel_size=3, **conv_kwargs), nn.ReLU(inplace=True),
    )


class SSDFeatureExtractorVGG(nn.Module):
    """VGG16 trunk with the SSD changes, returning the six feature maps (38, 19, 10, 5, 3, 1 for 300x300 input).

    ``features`` runs up to conv4_3; ``extra[0]`` continues with pool4, conv5 and the fully-connected layers
    turned into convolutions; ``extra[1:]`` are the four added blocks (conv8_2 .. conv11_2).
    """

    out_channels = [512, 1024, 512, 256, 256, 256]

    def __init__(self, backbone):
        super().__init__()
        pools = [i for i, layer in enumerate(backbone) if isinstance(layer, nn.MaxPool2d)]
        # pool3 rounds up so that conv4_3 is 38x38 for a 300x300 input (75 -> 38), as in the paper.
        backbone[pools[2]].ceil_mode = True
        # conv4_3 has a much larger feature scale than the later maps; it is L2-normalized per position and
        # rescaled by a learned per-channel factor initialised to 20 (ParseNet; SSD paper §3.1).
        self.scale_weight = nn.Parameter(flow.ones(512) * 20)
        self.features = nn.Sequential(*backbone[: pools[3]])
        fc = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),  # pool5: 3x3 stride 1 instead of 2x2 stride 2
            Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),  # fc6, atrous (dilated), subsampled
            nn.ReLU(inplace=True),
            Conv2d(1024, 1024, kernel_size=1),  # fc7
            nn.ReLU(inplace=True),
        )
        extra = nn.ModuleList([
            _extra_block(1024, 256, 512, padding=1, stride=2),  # conv8_2: 19 -> 10
            _extra_block(512, 128, 256, padding=1, stride=2),  # conv9_2: 10 -> 5
            _extra_block(256, 128, 256),  # conv10_2: 5 -> 3
            _extra_block(256, 128, 256),  # conv11_2: 3 -> 1
        ])
        xavier_init(fc)
        xavier_init(extra)
        # pool4 .. conv5_3 (VGG's last pool is replaced by pool5 above), then fc6/fc7.
        extra.insert(0, nn.Sequential(*backbone[pools[3]: -1], fc))
        self.extra = extra

    def forward(self, x):
        x = self.features(x)
        # x / ||x|| over channels. Not F.normalize: OneFlow's fused l2_normalize op has no ONNX conversion, and a
        # one-sided clamp of the norm converts wrongly; adding eps^2 under the root is equal to float precision
        # and keeps all-zero positions at zero.
        out = [self.scale_weight.view(1, -1, 1, 1) * x * flow.rsqrt((x * x).sum(dim=1, keepdim=True) + L2NORM_EPS ** 2)]
        for block in self.extra:
            x = block(x)
            out.append(x)
        return out


def freeze_vgg_stages(backbone, trainable_layers):
    """Freeze all but the last ``trainable_layers`` of VGG16's 5 stages (0: all frozen, 5: none)."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_backbone_layers must be in 0..5, got {trainable_layers}")
    stage_starts = [0] + [i for i, layer in enumerate(backbone) if isinstance(layer, nn.MaxPool2d)][:-1]
    freeze_before = len(backbone) if trainable_layers == 0 else stage_starts[5 - trainable_layers]
    for layer in list(backbone)[:freeze_before]:
        for p in layer.parameters():
            p.requires_grad_(False)


def ssd300_vgg16(pretrained=False, progress=True, num_classes=91, pretrained_backbone=False,
                 trainable_backbone_layers=None, label_names=None, **kwargs):
    """SSD300 with a VGG16 trunk (see :class:`cv.detection.models.ssd.SSD` for the input/output contract).

    Args:
        pretrained: start from the zoo's COCO weights (box AP 25.1). With ``num_classes=91`` they are loaded as
            they are; with other classes they are fine-tuning's starting point: every tensor that fits is loaded,
            the classification head is rebuilt, and the classes of ``label_names`` that COCO has ("person", "car")
            keep COCO's scores (:func:`cv.detection.models.transfer.transfer`). What was transferred is said on
            stderr (with ``progress``) and kept in ``model.weights_transfer``.
        progress: show a download progress bar and the transfer report.
        num_classes: including background; 91 is COCO's category-id space (ids 1..90).
        pretrained_backbone: start from the ImageNet VGG16 weights (ignored with ``pretrained``).
        trainable_backbone_layers: how many of VGG16's 5 stages are trained, counted from the last. Defaults to
            4 with pretrained weights; without them the whole trunk is trained (5).
        label_names: the class names by label, background first (``len == num_classes``), for ``pretrained`` with
            other classes.
        **kwargs: passed to :class:`~cv.detection.models.ssd.SSD` (``score_thresh``, ``nms_thresh``, ...).
    """
    if "size" in kwargs:
        raise ValueError("SSD300's input size is fixed at 300x300; use another builder for other sizes")
    if label_names is not None and len(label_names) != num_classes:
        raise ValueError(f"label_names has {len(label_names)} names (background first) for num_classes={num_classes}")
    trained = pretrained or pretrained_backbone
    if trainable_backbone_layers is None:
        trainable_backbone_layers = 4 if trained else 5
    elif not trained and trainable_backbone_layers != 5:
        warnings.warn("trainable_backbone_layers only applies to pretrained weights; training the whole trunk")
        trainable_backbone_layers = 5

    features = vgg16_features()
    if pretrained_backbone and not pretrained:
        features.load_state_dict(load_weights("vgg16_backbone", progress))
    freeze_vgg_stages(features, trainable_backbone_layers)

    config = dict(SSD300_CONFIG)
    anchor_generator = DefaultBoxGenerator(config.pop("aspect_ratios"), scales=config.pop("scales"),
                                           steps=config.pop("steps"))
    model = SSD(SSDFeatureExtractorVGG(features), anchor_generator, num_classes=num_classes, **{**config, **kwargs})
    model.weights_transfer = None
    if pretrained:
        model.weights_transfer = load_into(model, weights_url("coco"), label_names, progress=progress)
        if progress and model.weights_transfer.rebuilt:
            say(str(model.weights_transfer))
    return model


def freeze_trunk(model):
    """Keep VGG16's layers (conv1_1 to fc7) fixed: fine-tuning on a small dataset then trains only the added layers,
    the L2 scale and the heads."""
    for module in (model.backbone.features, model.backbone.extra[0]):
        for p in module.parameters():
            p.requires_grad_(False)
