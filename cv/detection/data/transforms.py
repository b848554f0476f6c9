"""SSD training augmentation (Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016, §2.2 "Data
augmentation"), box-aware, in NumPy and PIL only.

What: the recipe behind SSD300's published accuracy (25.1 COCO AP): photometric distortion, "zoom out" (place the
image on a larger canvas filled with the mean colour: trains small objects), a random patch sampled with a minimum
IoU against some object ("zoom in": trains large and partial objects), a horizontal flip, and a resize to the fixed
input size. The paper credits this augmentation with a large part of SSD's accuracy (+8.8 mAP on VOC2007, Table 2).

Why NumPy/PIL only: these transforms run in ``DataLoader`` worker processes; this module must not import OneFlow
(nor anything that does). The dataset turns the returned arrays into tensors.

Contract shared by every transform: ``t(image, boxes, labels, rng) -> (image, boxes, labels)``

* ``image``: a PIL image or an ``H x W x 3`` uint8 array, RGB. Internally, and as the output of the individual
  transforms, images are PIL RGB images (PIL's C routines do the pixel work). The presets return float32 arrays.
* ``boxes``: float32 ``[N, 4]``, ``x1, y1, x2, y2`` in pixels; ``labels``: int64 ``[N]``; ``N`` may be 0.
* ``rng``: a ``numpy.random.Generator``; all randomness comes from it, so a seed fixes the output.
* Inputs are never modified. A transform that does nothing may hand back its input objects themselves.

Each random transform splits into ``sample(...)`` (draw the parameters) and a deterministic method that applies
given parameters (``distort``, ``expand``, ``crop``, ``flip``); the tests drive the latter directly.

Speed (:class:`SSDTrainTransform`): the literal chain photometric -> zoom-out -> crop -> flip -> resize would
distort a full-resolution image and paste it on a canvas of up to 16x its area, most of which the crop and resize
throw away. The preset instead draws the parameters in the same order from the same ``rng`` (so it takes the same
random decisions as the literal chain, ``tests/reference.py``), computes boxes with the same functions,
and renders the pixels in one resampling step:

* zoom-out + crop + resize compose into one affine map; only the part of the source image that lands in the output
  is resampled (``Image.resize`` with a source ``box``, antialiased bilinear), straight to its place in the output,
  and pasted on an output-sized image filled with the mean colour. No canvas is ever built.
* The photometric distortion is applied to that small resampled tile only, after the geometry. Our photometric
  operations are per-pixel maps (contrast too: it scales about the grey mean of the *undistorted input image*,
  which the preset computes on the source image), so they commute exactly with crop, flip and zoom-out placement.
  The fill is left out of the distortion, as in the literal chain, where the canvas is filled with the plain mean
  colour after the image was distorted. With resizing they commute only approximately (the per-pixel maps clip
  and, for hue, are non-linear; bilinear resampling averages neighbours): the preset's pixels differ from the
  literal chain's by interpolation-level amounts, which the tests bound.
* Output pixels that straddle the edge of the image on a zoom-out canvas (at most one row/column on each side)
  are given the fill colour rather than a blend of image and fill; the image content keeps its exact position, so
  boxes stay exact.

``scripts/benchmark.py --sections data`` measures the speed (reading, decoding, this preset, conversion).
"""
from typing import NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image

from cv.detection.models.box_ops_numpy import box_iou

# --- the recipe's parameters, all in one place (the output size and the zoom-out fill, the model's mean colour,
# are the model's: SSD300_CONFIG passes them in) -------------------------------------------------------------------
PHOTOMETRIC_P = 0.5                     # probability of each photometric operation
BRIGHTNESS = (0.875, 1.125)             # multiplicative factor (+-32/255 of the ~255 range, as in the Caffe SSD)
CONTRAST = (0.5, 1.5)                   # factor on the deviation from the grey mean
SATURATION = (0.5, 1.5)                 # factor on the deviation from the pixel's grey level
HUE = (-0.05, 0.05)                     # shift, in full turns of the hue circle
CHANNEL_SWAP_P = 0.5                    # probability of a random permutation of the RGB channels
ZOOM_P = 0.5                            # probability of zoom-out
ZOOM_RATIO = (1.0, 4.0)                 # canvas side / image side
CROP_OPTIONS = (None, 0.1, 0.3, 0.5, 0.7, 0.9)  # None: keep the whole image; else the minimum IoU
CROP_TRIALS = 50                        # patches tried per chosen minimum IoU
CROP_ROUNDS = 10                        # choices drawn before giving up (bounds the work; input returned unchanged)
CROP_SCALE = (0.3, 1.0)                 # patch side / image side, each side independently
CROP_ASPECT = (0.5, 2.0)                # patch width / height, in pixels
FLIP_P = 0.5                            # probability of a horizontal flip


# --- conversions ---------------------------------------------------------------------------------------------------
def as_image(image):
    """A PIL RGB image for ``image`` (PIL image of any mode, or ``H x W x 3`` uint8 array; never modified)."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected a PIL image or an HxWx3 uint8 array, got {array.dtype} {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array))


def as_targets(boxes, labels):
    """``boxes`` as float32 ``[N, 4]`` and ``labels`` as int64 ``[N]`` (views of the inputs when possible)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    return boxes, labels


def to_chw_float(image):
    """``image`` (PIL or HxWx3 uint8) as a C-contiguous float32 ``[3, H, W]`` array in 0-1: exactly
    ``np.asarray(image, np.float32).transpose(2, 0, 1) / 255``."""
    return np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 0, 1) / 255)


def grey_mean(image):
    """Mean grey level (PIL's ITU-R 601 luma, 0-255) of a PIL RGB image."""
    hist = np.asarray(image.convert("L").histogram(), dtype=np.float64)
    return float(hist @ np.arange(256) / max(hist.sum(), 1.0))


# --- box arithmetic shared by the transforms and the fused preset (same functions, so identical results) ---------
def shift_boxes(boxes, dx, dy):
    return (boxes + np.asarray([dx, dy, dx, dy], dtype=np.float32)).astype(np.float32)


def crop_boxes(boxes, labels, patch):
    """Boxes whose centre lies strictly inside ``patch = (x0, y0, x1, y1)``, clipped to it, in patch coordinates;
    their labels. A box with positive size and its centre strictly inside keeps a positive size when clipped."""
    x0, y0, x1, y1 = patch
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    keep = (cx > x0) & (cx < x1) & (cy > y0) & (cy < y1)
    kept = boxes[keep]
    kept = np.stack([np.clip(kept[:, 0], x0, x1) - x0, np.clip(kept[:, 1], y0, y1) - y0,
                     np.clip(kept[:, 2], x0, x1) - x0, np.clip(kept[:, 3], y0, y1) - y0], axis=1)
    return kept.astype(np.float32).reshape(-1, 4), labels[keep]


def flip_boxes(boxes, width):
    return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]],
                    axis=1).astype(np.float32).reshape(-1, 4)


def resize_boxes(boxes, old_size, new_size):
    """Scale boxes from an image of ``old_size = (width, height)`` to ``new_size``, clipped to the new image (the
    clip only removes float rounding past the border)."""
    (w, h), (new_w, new_h) = old_size, new_size
    scale = np.asarray([new_w / w, new_h / h, new_w / w, new_h / h])
    limit = np.asarray([new_w, new_h, new_w, new_h])
    return np.clip(boxes * scale, 0, limit).astype(np.float32).reshape(-1, 4)


# --- photometric operations: per-pixel maps on PIL RGB images ------------------------------------------------------
def _rgb_lut(fn):
    """A 768-entry ``Image.point`` table applying ``fn`` (0-255 float -> float) to every channel, rounded, clipped."""
    table = np.clip(np.rint(fn(np.arange(256, dtype=np.float64))), 0, 255).astype(np.uint8)
    return table.tolist() * 3


def adjust_brightness(image, factor):
    """Every channel value times ``factor``."""
    return image.point(_rgb_lut(lambda v: v * factor))


def adjust_contrast(image, factor, centre):
    """Deviations from the grey level ``centre`` times ``factor``. ``centre`` is a parameter (not recomputed from
    ``image``) so that the operation is per-pixel and commutes with cropping; see the module docstring."""
    return image.point(_rgb_lut(lambda v: centre + factor * (v - centre)))


def adjust_saturation(image, factor):
    """Each pixel's deviation from its own grey level times ``factor``."""
    return Image.blend(image.convert("L").convert("RGB"), image, factor)


def adjust_hue(image, delta):
    """Rotate the hue by ``delta`` full turns (PIL's 8-bit HSV: quantised to 1/256 turn)."""
    shift = int(round(delta * 256)) % 256
    if shift == 0:
        return image
    h, s, v = image.convert("HSV").split()
    h = h.point([(i + shift) % 256 for i in range(256)])
    return Image.merge("HSV", (h, s, v)).convert("RGB")


class PhotometricParams(NamedTuple):
    ops: Tuple[Tuple[str, float], ...]      # (name, value) in the order applied; only the drawn-on operations
    channels: Optional[Tuple[int, int, int]]  # output channel c takes input channel channels[c]; None: no swap


class PhotometricDistort:
    """Brightness, contrast, saturation and hue, each with probability ``p`` and in a random order, then a random
    channel permutation with probability ``channel_p``. Values stay uint8 (clipped).

    ``brightness`` is a factor range, ``contrast`` and ``saturation`` factor ranges about the grey mean of the
    input image and of each pixel, ``hue`` a range of shifts in full turns. Contrast is taken about the grey mean of
    the image *given to this transform* (before any of its operations), which keeps every operation a per-pixel map.
    """

    OPS = ("brightness", "contrast", "saturation", "hue")

    def __init__(self, brightness=BRIGHTNESS, contrast=CONTRAST, saturation=SATURATION, hue=HUE, p=PHOTOMETRIC_P,
                 channel_p=CHANNEL_SWAP_P):
        self.ranges = (tuple(brightness), tuple(contrast), tuple(saturation), tuple(hue))
        self.p = p
        self.channel_p = channel_p

    def sample(self, rng):
        """Draw a :class:`PhotometricParams`. Always consumes the same amount of randomness."""
        on = rng.random(4) < self.p
        values = [rng.uniform(lo, hi) for lo, hi in self.ranges]
        order = rng.permutation(4)
        swap = rng.random() < self.channel_p
        perm = rng.permutation(3)
        ops = tuple((self.OPS[i], float(values[i])) for i in order if on[i])
        return PhotometricParams(ops, tuple(int(c) for c in perm) if swap else None)

    @staticmethod
    def needs_centre(params):
        return any(name == "contrast" for name, _ in params.ops)

    def distort(self, image, params, centre=None):
        """Apply ``params`` to PIL RGB ``image``; ``centre`` is the grey level for contrast (default: the grey mean
        of ``image``; the fused preset passes the mean of the full source image while distorting only a tile)."""
        if centre is None and self.needs_centre(params):
            centre = grey_mean(image)
        for name, value in params.ops:
            if name == "brightness":
                image = adjust_brightness(image, value)
            elif name == "contrast":
                image = adjust_contrast(image, value, centre)
            elif name == "saturation":
                image = adjust_saturation(image, value)
            else:
                image = adjust_hue(image, value)
        if params.channels is not None:
            bands = image.split()
            image = Image.merge("RGB", [bands[c] for c in params.channels])
        return image

    def __call__(self, image, boxes, labels, rng):
        image = as_image(image)
        boxes, labels = as_targets(boxes, labels)
        return self.distort(image, self.sample(rng)), boxes, labels


class ZoomOut:
    """With probability ``p``, put the image on a canvas ``ratio`` (uniform in ``ratio_range``) times its size in
    each side, at a uniformly random integer position, the rest filled with ``mean`` (RGB, 0-255)."""

    def __init__(self, mean, ratio_range=ZOOM_RATIO, p=ZOOM_P):
        self.fill = tuple(int(round(c)) for c in mean)
        self.ratio_range = tuple(ratio_range)
        self.p = p

    @staticmethod
    def canvas_size(size, ratio):
        """Canvas ``(width, height)`` for an image of ``size = (width, height)``."""
        return int(size[0] * ratio), int(size[1] * ratio)

    def sample(self, size, rng):
        """``None`` (no zoom-out) or ``(ratio, (left, top))`` for an image of ``size = (width, height)``."""
        if not rng.random() < self.p:
            return None
        ratio = rng.uniform(*self.ratio_range)
        canvas_w, canvas_h = self.canvas_size(size, ratio)
        left = int(rng.integers(0, canvas_w - size[0] + 1))
        top = int(rng.integers(0, canvas_h - size[1] + 1))
        return ratio, (left, top)

    def expand(self, image, boxes, labels, ratio, offset):
        """The canvas for ``ratio >= 1`` with the image's top-left corner at ``offset = (left, top)``."""
        image = as_image(image)
        boxes, labels = as_targets(boxes, labels)
        canvas_w, canvas_h = self.canvas_size(image.size, ratio)
        left, top = offset
        if not (0 <= left <= canvas_w - image.width and 0 <= top <= canvas_h - image.height):
            raise ValueError(f"offset {offset} puts the {image.size} image outside the {canvas_w}x{canvas_h} canvas")
        canvas = Image.new("RGB", (canvas_w, canvas_h), self.fill)
        canvas.paste(image, (left, top))
        return canvas, shift_boxes(boxes, left, top), labels

    def __call__(self, image, boxes, labels, rng):
        image = as_image(image)
        boxes, labels = as_targets(boxes, labels)
        drawn = self.sample(image.size, rng)
        return (image, boxes, labels) if drawn is None else self.expand(image, boxes, labels, *drawn)


class IoUCrop:
    """The paper's patch sampling. Draw one of ``options`` (``None``: keep the whole image; a number: the minimum
    IoU); for a minimum IoU, try ``trials`` patches with each side a uniform fraction ``scale`` of the image's,
    width/height in ``aspect``, at a uniformly random integer position. A patch is accepted when some box whose
    centre lies inside it has IoU >= the minimum with it (so the object that justified the patch survives it). If
    no trial succeeds, draw again; after ``rounds`` draws, give up and return the input unchanged. Kept boxes:
    those with their centre inside the patch, clipped to it. Without boxes, the input is returned unchanged."""

    def __init__(self, options=CROP_OPTIONS, trials=CROP_TRIALS, rounds=CROP_ROUNDS, scale=CROP_SCALE,
                 aspect=CROP_ASPECT):
        self.options = tuple(options)
        self.trials = trials
        self.rounds = rounds
        self.scale = tuple(scale)
        self.aspect = tuple(aspect)

    def sample(self, size, boxes, rng):
        """A patch ``(x0, y0, x1, y1)`` (integers) in an image of ``size = (width, height)`` with ``boxes``, or
        ``None`` (keep the whole image)."""
        if len(boxes) == 0:
            return None
        width, height = size
        boxes = np.asarray(boxes, dtype=np.float64)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        lo, hi = self.scale
        for _ in range(self.rounds):
            min_iou = self.options[int(rng.integers(len(self.options)))]
            if min_iou is None:
                return None
            # All trials of a round at once: a fixed amount of randomness per round and no Python loop per patch.
            u = rng.random((self.trials, 4))
            pw = np.maximum((width * (lo + (hi - lo) * u[:, 0])).astype(np.int64), 1)
            ph = np.maximum((height * (lo + (hi - lo) * u[:, 1])).astype(np.int64), 1)
            x0 = ((width - pw + 1) * u[:, 2]).astype(np.int64)
            y0 = ((height - ph + 1) * u[:, 3]).astype(np.int64)
            patches = np.stack([x0, y0, x0 + pw, y0 + ph], axis=1).astype(np.float64)
            inside = ((centres[None, :, 0] > patches[:, None, 0]) & (centres[None, :, 0] < patches[:, None, 2])
                      & (centres[None, :, 1] > patches[:, None, 1]) & (centres[None, :, 1] < patches[:, None, 3]))
            aspect = pw / ph
            good = ((aspect >= self.aspect[0]) & (aspect <= self.aspect[1])
                    & (inside & (box_iou(patches, boxes) >= min_iou)).any(axis=1))
            if good.any():
                i = int(np.argmax(good))
                return int(x0[i]), int(y0[i]), int(x0[i] + pw[i]), int(y0[i] + ph[i])
        return None

    def crop(self, image, boxes, labels, patch):
        """Crop to integer ``patch = (x0, y0, x1, y1)`` inside the image; see :func:`crop_boxes` for the boxes."""
        image = as_image(image)
        boxes, labels = as_targets(boxes, labels)
        x0, y0, x1, y1 = patch
        if not (0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height):
            raise ValueError(f"patch {patch} is not a non-empty region of the {image.size} image")
        return (image.crop(patch),) + crop_boxes(boxes, labels, patch)

    def __call__(self, image, boxes, labels, rng):
        image = as_image(image)
        boxes, labels = as_targets(boxes, labels)
        patch = self.sample(image.size, boxes, rng)
        return (image, boxes, labels) if patch is None else self.crop(image, boxes, labels, patch)


class HorizontalFlip:
    """Mirror left-right with probability ``p``: ``x1' = W - x2``, ``x2' = W - x1``."""

    def __init__(self, p=FLIP_P):
        self.p = p

    def sample(self, rng):
        return bool(rng.random() < self.p)

    def flip(self, image, boxes, labels):
        image = as_image(image)
        boxes, labels = as_targets(boxes, labels)
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), flip_boxes(boxes, image.width), labels

    def __call__(self, image, boxes, labels, rng):
        do = self.sample(rng)
        return self.flip(image, boxes, labels) if do else (as_image(image),) + as_targets(boxes, labels)


class Resize:
    """Resize to ``size = (height, width)``, bilinear (antialiased when shrinking); boxes scaled."""

    def __init__(self, size):
        self.size = tuple(size)

    def __call__(self, image, boxes, labels, rng=None):
        image = as_image(image)
        boxes, labels = as_targets(boxes, labels)
        new_size = (self.size[1], self.size[0])
        return image.resize(new_size, Image.BILINEAR), resize_boxes(boxes, image.size, new_size), labels


class Compose:
    """Apply ``transforms`` in order, passing the same ``rng`` along."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, boxes, labels, rng):
        for t in self.transforms:
            image, boxes, labels = t(image, boxes, labels, rng)
        return image, boxes, labels


# --- presets -------------------------------------------------------------------------------------------------------
class Plan(NamedTuple):
    """The random decisions of one :class:`SSDTrainTransform` call, in source-image terms."""
    photometric: PhotometricParams
    zoom: Optional[Tuple[float, Tuple[int, int]]]  # (ratio, (left, top)) or None
    canvas_size: Tuple[int, int]    # (width, height) of the zoom-out canvas (the image's size without zoom-out)
    offset: Tuple[int, int]         # the image's top-left corner on the canvas
    patch: Tuple[int, int, int, int]  # the crop on the canvas (the whole canvas without crop)
    flip: bool


def _inner_span(offset, length, patch_length, out_length):
    """Output pixels ``[a, b)`` lying wholly on the image, when a patch of ``patch_length`` canvas pixels that starts
    ``offset`` pixels before the image (of ``length``) maps onto ``out_length`` output pixels. Integer arithmetic:
    exact."""
    a = -((-offset * out_length) // patch_length)               # ceil
    b = ((offset + length) * out_length) // patch_length         # floor
    return min(max(a, 0), out_length), min(max(b, 0), out_length)


def _finish(boxes, labels):
    """Fresh float32/int64 arrays; drops boxes that float32 rounding made empty (never seen, but the model rejects
    them)."""
    boxes = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], np.array(labels, dtype=np.int64)[keep]


class SSDTrainTransform:
    """Photometric distortion -> zoom-out -> IoU crop -> flip -> resize to ``size = (height, width)``, then
    conversion: ``(float32 [3, H, W] in 0-1, boxes float32 [N, 4], labels int64 [N])``.

    Takes the same random decisions as the literal chain of the transforms above (``tests/reference.py``) for the same
    ``rng`` state, and returns the same boxes and labels; the pixels are rendered in one step (module docstring).
    """

    def __init__(self, size, mean):
        self.size = tuple(size)
        self.photometric = PhotometricDistort()
        self.zoom_out = ZoomOut(mean)
        self.iou_crop = IoUCrop()
        self.flip = HorizontalFlip()
        self.resize = Resize(size)

    def sample(self, image_size, boxes, rng):
        """Draw a :class:`Plan` for an image of ``image_size = (width, height)`` with float32 ``boxes``, consuming
        ``rng`` exactly as the literal chain does."""
        photometric = self.photometric.sample(rng)
        zoom = self.zoom_out.sample(image_size, rng)
        if zoom is None:
            canvas_size, offset = tuple(image_size), (0, 0)
        else:
            canvas_size, offset = ZoomOut.canvas_size(image_size, zoom[0]), zoom[1]
        patch = self.iou_crop.sample(canvas_size, shift_boxes(boxes, *offset), rng)
        if patch is None:
            patch = (0, 0) + canvas_size
        return Plan(photometric, zoom, canvas_size, offset, patch, self.flip.sample(rng))

    def apply_to_boxes(self, boxes, labels, plan):
        """Output boxes and labels for ``plan``, computed step by step with the functions the chain uses."""
        x0, y0, x1, y1 = plan.patch
        patch_size = (x1 - x0, y1 - y0)
        if plan.zoom is not None:
            boxes = shift_boxes(boxes, *plan.offset)
        if plan.patch != (0, 0) + plan.canvas_size:
            boxes, labels = crop_boxes(boxes, labels, plan.patch)
        if plan.flip:
            boxes = flip_boxes(boxes, patch_size[0])
        return resize_boxes(boxes, patch_size, (self.size[1], self.size[0])), labels

    def render(self, image, plan):
        """The output PIL image of ``size`` for PIL RGB ``image`` and ``plan``."""
        out_h, out_w = self.size
        left, top = plan.offset
        x0, y0, x1, y1 = plan.patch
        pw, ph = x1 - x0, y1 - y0
        ax, bx = _inner_span(left - x0, image.width, pw, out_w)
        ay, by = _inner_span(top - y0, image.height, ph, out_h)
        if bx <= ax or by <= ay:    # the patch shows (almost) only the fill
            out = Image.new("RGB", (out_w, out_h), self.zoom_out.fill)
        else:
            sx, sy = pw / out_w, ph / out_h
            # Source rectangle (image pixels) of output pixels [ax, bx) x [ay, by); the clamp only removes rounding.
            box = (max(0.0, x0 - left + ax * sx), max(0.0, y0 - top + ay * sy),
                   min(float(image.width), x0 - left + bx * sx), min(float(image.height), y0 - top + by * sy))
            tile = image.resize((bx - ax, by - ay), Image.BILINEAR, box=box)
            centre = grey_mean(image) if PhotometricDistort.needs_centre(plan.photometric) else None
            tile = self.photometric.distort(tile, plan.photometric, centre)
            if tile.size == (out_w, out_h):
                out = tile
            else:
                out = Image.new("RGB", (out_w, out_h), self.zoom_out.fill)
                out.paste(tile, (ax, ay))
        return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if plan.flip else out

    def __call__(self, image, boxes, labels, rng):
        image = as_image(image)
        boxes, labels = as_targets(boxes, labels)
        plan = self.sample(image.size, boxes, rng)
        boxes, labels = _finish(*self.apply_to_boxes(boxes, labels, plan))
        return to_chw_float(self.render(image, plan)), boxes, labels


class SSDEvalTransform:
    """No augmentation and no resize (the model resizes): ``(float32 [3, H, W] in 0-1, boxes, labels)`` with the
    image values exactly ``np.asarray(image, np.float32).transpose(2, 0, 1) / 255`` and boxes/labels unchanged
    (fresh float32/int64 copies). ``rng`` is accepted for the common signature and unused."""

    def __call__(self, image, boxes, labels, rng=None):
        boxes, labels = as_targets(boxes, labels)
        return to_chw_float(as_image(image)), boxes.copy(), labels.copy()


def ssd_train_transform(size, mean):
    """The SSD training augmentation (see :class:`SSDTrainTransform`) to images of ``size`` (height, width), the
    zoom-out canvas filled with ``mean`` (RGB 0-255: the model's mean colour)."""
    return SSDTrainTransform(size, mean)


def ssd_eval_transform():
    """Conversion only (see :class:`SSDEvalTransform`)."""
    return SSDEvalTransform()
