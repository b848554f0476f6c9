"""A deterministic synthetic object-detection dataset in COCO format, for when no COCO download is at hand.

Training scripts, smoke tests and users without the 20 GB of COCO 2017 need *some* data that the real COCO
tooling (``pycocotools``, the data loader, the evaluator) accepts unchanged. :func:`make_sample_dataset` writes
that, in the COCO 2017 layout::

    DIR/train2017/000000000001.jpg ...
    DIR/val2017/000010000001.jpg ...
    DIR/annotations/instances_train2017.json
    DIR/annotations/instances_val2017.json

Each image is a textured scene (gradient, low-frequency blotches, stripes or checkers, unlabeled clutter: lines,
arcs, scribbles, pixel noise, sometimes blur) with 1-8 labeled shapes. The shape is the class (circle,
square, triangle, ring, cross, star); colour, size (from ~12 px to 70% of the short image side), stretch, rotation
and shading are random, so nothing but the outline gives the class away. Later shapes occlude earlier ones, but a
shape is never placed where it would hide more than :data:`MAX_HIDDEN_FRACTION` of an earlier one, so every
painted shape is labeled and every label is visible. The result is easy enough to learn on a CPU and hard enough
(small objects, occlusion, clutter) that a detector's AP is an informative number rather than 1.0.

Annotations: ``bbox`` is the shape's full (amodal) extent, ``area`` its pixel count (before occlusion; a ring's
hole excluded), ``segmentation`` its outer outline as one polygon (a ring's hole is not expressed).

Category ids are deliberately non-contiguous (as in COCO, whose 80 classes use ids 1-90), so code that maps
category ids to contiguous labels is exercised. Their names are not COCO's, so readers use contiguous labels 1..6.

**The COCO-faithful variant** (``coco_categories=True``) exercises what the plain sample cannot: COCO's own 91-way
label space and the parts of real COCO annotation files that the plain sample lacks. The pictures are the same
kind of shape scenes, but each shape stands for one of COCO's categories, with COCO's id, name and supercategory
(:data:`COCO_SHAPE_CATEGORIES`: 11 fire hydrant, 13 stop sign, 27 backpack, 67 dining table, 84 book, 90
toothbrush; ids beside COCO's unused ones), so that :func:`cv.detection.data.coco.label_mapping` picks COCO mode. It
also holds, as COCO does:

- crowd regions: a cluster of many small overlapping shapes of one category annotated as *one* ``iscrowd: 1``
  region, its segmentation an uncompressed RLE ``{"counts": [...], "size": [h, w]}``, ``bbox`` and ``area`` those
  of the RLE mask; crowd annotation ids are numbered apart (900000000000 + ...), as COCO's;
- images without any annotation, in both splits;
- grayscale images stored as 1-channel JPEGs, an RGBA PNG and a palette PNG (``.png`` file names; COCO's are all
  ``.jpg``, but COCO-format datasets are not);
- sizes up to 640 px a side in portrait and landscape, very wide and very tall images (aspect 3.2-4.5), images with
  30-60 small objects, objects clipped at the image border;
- objects in all of COCO's area ranges (small < 32^2 <= medium <= 96^2 < large) in every split of >= 4 images;
- COCO's top-level keys and per-record fields (``coco_url``, ``flickr_url``, ``date_captured``, ...), in its order.

There, ``segmentation`` is the shape's polygon (a ring's hole kept by a cut to it, as one polygon), ``area`` its
pixel count by pycocotools' own rasterizer and ``bbox`` the polygon's extent, as in COCO, and the pixels painted
are exactly that mask: objects never overlap, so each segmentation is what is visible of its object. The first
images of each split run through :data:`COCO_SCHEDULE`, so a split of >= 9 images holds every feature.

Everything is a function of ``seed`` alone: image ``i`` of split ``s`` draws from
``np.random.default_rng([seed, s, i])`` (``[seed, s, i, 1]`` in the COCO-faithful variant), images are written
with fixed settings and the JSON holds no timestamps, so the same seed gives byte-identical files (with the same
Pillow, libjpeg and pycocotools) and any image can be regenerated alone. Every file is written under a temporary
name and renamed into place (:func:`cv.detection.utils.fileio.atomic_path`).

**The YOLO variant** (:func:`make_yolo_sample_dataset`) is the plain sample converted to YOLO's layout
(``images/``, ``labels/``, ``data.yaml``): what the YOLO path (:mod:`cv.detection.data.yolo`) runs on.

**The Pascal VOC variant** (:func:`make_voc_sample_dataset`) writes the plain sample's pictures in VOC's layout
(``VOCdevkit/VOC2007``), the shapes named by six of VOC's classes, small objects marked difficult, with
train/val/trainval/test image sets: what the VOC path (:mod:`cv.detection.data.voc`) runs on without VOC.

Only NumPy and Pillow are imported here (no OneFlow), so the generator is quick to start; the COCO-faithful variant
also imports ``pycocotools.mask`` when it runs.
"""
import json
import math
import os
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cv.detection.utils.fileio import atomic_path, remove_dead_temporaries, write_bytes

# ---------------------------------------------------------------------------------------------------------------
# All knobs, in one place.
# ---------------------------------------------------------------------------------------------------------------

# (category id, name). Ids are non-contiguous on purpose (see the module docstring); the order is the label order.
CATEGORIES = (
    (1, "circle"),
    (3, "square"),
    (4, "triangle"),
    (7, "ring"),
    (8, "cross"),
    (10, "star"),
)
SUPERCATEGORY = "shape"

# (split name, index). The index seeds the split's generator and places its ids, so it must never change.
SPLITS = (("train2017", 0), ("val2017", 1))
# Image and annotation ids of split s are s * ID_STRIDE + 1, + 2, ...: unique within a file, disjoint across splits.
ID_STRIDE = 10_000_000

DEFAULT_NUM_TRAIN = 300
DEFAULT_NUM_VAL = 50

IMAGE_WIDTH_RANGE = (320, 512)    # inclusive, pixels
IMAGE_HEIGHT_RANGE = (240, 400)

OBJECTS_PER_IMAGE = (1, 8)        # inclusive; fewer result when no non-occluding place is found
MIN_OBJECT_SIZE = 12.0            # the longer box side, pixels; sizes are log-uniform so small objects are common
MAX_OBJECT_FRACTION = 0.7         # the longer box side at most this fraction of the shorter image side
MAX_ASPECT = 2.6                  # box width/height in [1/MAX_ASPECT, MAX_ASPECT], log-uniform
MIN_SHORT_SIDE = 5.0              # pixels; a stretched small shape below this would be a line
MAX_HIDDEN_FRACTION = 0.7         # a new shape may hide at most this fraction of an earlier shape's pixels
PLACEMENT_TRIES = 12              # attempts per object before it is dropped
MIN_CONTRAST = 60.0               # Euclidean RGB distance between a shape's colour and the background under it
COLOUR_TRIES = 8
SHADING_RANGE = (0.0, 45.0)       # amplitude of the linear shading across a shape, grey levels

RING_THICKNESS = (0.18, 0.4)      # of the outer radius
CROSS_ARM = (0.25, 0.45)          # arm width, of the cross's width
STAR_POINTS = (5, 6)              # inclusive
STAR_INNER = (0.38, 0.55)         # inner radius, of the outer radius
CIRCLE_VERTICES = 48              # polygon approximation of circles and rings (also the segmentation)

CLUTTER_COUNT = (3, 14)           # inclusive: unlabeled lines, arcs and scribbles per image
CLUTTER_SIZE = (0.04, 0.25)       # of the shorter image side
PATTERN_PROBABILITY = 0.6         # stripes or checkers over the gradient
PATTERN_PERIOD = (6.0, 48.0)      # pixels
PATTERN_ALPHA = (0.12, 0.45)
BLOTCH_AMPLITUDE = (10.0, 45.0)   # low-frequency colour noise, grey levels
PIXEL_NOISE_SIGMA = (2.0, 12.0)   # final Gaussian noise, grey levels
BLUR_PROBABILITY = 0.25
BLUR_RADIUS = (0.4, 1.1)

JPEG_SETTINGS = dict(format="JPEG", quality=90, subsampling=2, optimize=False, progressive=False)
FIXED_DATE = "2024-01-01 00:00:00"  # no real timestamps: they would break byte-identical regeneration
INFO = {
    "description": "Synthetic shapes sample dataset (scripts/make_sample_dataset.py)",
    "version": "1.0",
    "year": 2024,
    "contributor": "OneFlow model zoo",
    "date_created": FIXED_DATE,
}
LICENSE = {"id": 1, "name": "CC0 1.0 (synthetic data)", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}

# ---------------------------------------------------------------------------------------------------------------
# The COCO-faithful variant's knobs (coco_categories=True); the plain sample's above are shared where they apply.
# ---------------------------------------------------------------------------------------------------------------

# (shape, COCO id, COCO name, COCO supercategory): six of COCO 2017's 80 categories, exactly as its annotation files
# name them, so that label_mapping(categories, "auto") picks COCO's 91-way label space. The pictures are still the
# shapes (a "stop sign" here is a circle): the names are labels, not content. The ids sit beside COCO's unused ids
# (11 and 13 around 12, 27 after 26, 67 between 66 and 68, 84 after 83) and include 90, the last: where an
# off-by-one in mapping ids to labels would show. The order is the shape order of CATEGORIES.
COCO_SHAPE_CATEGORIES = (
    ("circle", 13, "stop sign", "outdoor"),
    ("square", 84, "book", "indoor"),
    ("triangle", 27, "backpack", "accessory"),
    ("ring", 67, "dining table", "furniture"),
    ("cross", 11, "fire hydrant", "outdoor"),
    ("star", 90, "toothbrush", "indoor"),
)
COCO_STREAM = 1                   # image i of split s draws from default_rng([seed, s, i, COCO_STREAM])

# Each image is drawn as a (layout, format, frame). Layouts: "objects" 1-8 shapes; "empty" none (COCO has images
# without annotations: 48 in val2017); "crowd" one crowd region and 1-5 shapes; "many" 30-60 small shapes; "large"
# one large and one medium shape and 0-4 more. Formats: RGB JPEG, grayscale (1-channel) JPEG, RGBA PNG, palette PNG.
# Frames: COCO-like sizes, or very wide or very tall. The first images of every split run through COCO_SCHEDULE,
# so that any split of >= 9 images holds every feature (and >= 4 every COCO area range); later images draw each
# attribute independently with these weights.
COCO_SCHEDULE = (
    ("many", "rgb", "normal"),
    ("empty", "rgb", "normal"),
    ("crowd", "rgb", "normal"),
    ("large", "gray", "normal"),
    ("objects", "rgb", "wide"),
    ("objects", "rgba", "tall"),
    ("crowd", "gray", "wide"),
    ("empty", "gray", "tall"),
    ("objects", "palette", "normal"),
)
COCO_LAYOUTS = (("objects", 0.70), ("empty", 0.07), ("crowd", 0.10), ("many", 0.05), ("large", 0.08))
COCO_FORMATS = (("rgb", 0.82), ("gray", 0.12), ("rgba", 0.03), ("palette", 0.03))
COCO_FRAMES = (("normal", 0.80), ("wide", 0.10), ("tall", 0.10))

COCO_LONG_SIDE = (320, 640)       # inclusive, pixels: COCO's images are at most 640 px a side
COCO_ASPECT = (1.0, 1.8)          # long side / short side of a "normal" frame (COCO's are mostly 4:3 and 3:2)
COCO_LANDSCAPE = 0.7              # probability that a normal frame is wider than tall
COCO_EXTREME_LONG_SIDE = (560, 640)
COCO_EXTREME_ASPECT = (3.2, 4.5)  # long / short side of a "wide" or "tall" frame

COCO_OBJECTS = (1, 8)             # inclusive, for the "objects" layout
COCO_MIN_OBJECT_SIZE = 10.0       # the longer box side, pixels
COCO_MAX_OBJECT_FRACTION = 0.6    # the longer box side at most this fraction of the shorter image side
COCO_MIN_AREA = 12                # pixels; COCO itself has objects of a few pixels
SIZED_PLACEMENT_TRIES = 40        # for the objects that must be large or medium
COCO_TRUNCATED = 0.15             # probability that a shape may run off the image (then clipped at the border)
COCO_TRUNCATION = 0.45            # at most this fraction of its box outside the image
COCO_MANY_OBJECTS = (30, 60)      # inclusive, for the "many" layout
COCO_MANY_SIZE = (8.0, 24.0)      # their longer box side, pixels: all small
CROWD_MEMBERS = (15, 40)          # inclusive: shapes in a crowd
CROWD_EXTENT = (0.08, 0.2)        # the crowd's elliptic area: semi-axes as fractions of the image's width, height
CROWD_MEMBER_SIZE = (0.25, 0.7)   # a member's longer side, of the smaller semi-axis (at least 8 px): members overlap
MIN_LUMA_CONTRAST = 40.0          # grey levels between a shape and what is under it, in grayscale images

SMALL_AREA, LARGE_AREA = 32 ** 2, 96 ** 2  # COCO's area ranges: small < 32^2 <= medium <= 96^2 < large
CROWD_ID_OFFSET = 900_000_000_000  # crowd annotation ids are numbered apart, as COCO's (900100000000 + ...)

PNG_SETTINGS = dict(format="PNG", compress_level=6, optimize=False)
COCO_INFO = {
    "description": ("Synthetic shapes sample dataset, COCO-faithful variant "
                    "(scripts/make_sample_dataset.py --coco-categories)"),
    "url": "",
    "version": "1.0",
    "year": 2024,
    "contributor": "OneFlow model zoo",
    "date_created": "2024/01/01",
}
COCO_LICENSE = {"url": LICENSE["url"], "id": LICENSE["id"], "name": LICENSE["name"]}  # COCO's field order

_IMAGE_NAME = re.compile(r"^\d{12}\.(jpg|png)$")


# ---------------------------------------------------------------------------------------------------------------
# Shapes: each is one or two polygons in unit coordinates (outer outline, optional hole), centred on the origin.
# ---------------------------------------------------------------------------------------------------------------

def _regular(n, radius=1.0, phase=0.0):
    a = phase + np.arange(n) * (2 * math.pi / n)
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _shape_polygons(name, rng):
    """``(outer, hole)``: float arrays ``[K, 2]``; ``hole`` is None except for rings."""
    if name == "circle":
        return _regular(CIRCLE_VERTICES), None
    if name == "ring":
        return _regular(CIRCLE_VERTICES), _regular(CIRCLE_VERTICES, 1.0 - rng.uniform(*RING_THICKNESS))
    if name == "square":
        return np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]), None
    if name == "triangle":
        return _regular(3, phase=-math.pi / 2), None
    if name == "cross":
        t = rng.uniform(*CROSS_ARM)  # half arm width, in a [-1, 1] square
        pts = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t),
               (-t, -t)]
        return np.array(pts, dtype=float), None
    if name == "star":
        n = int(rng.integers(STAR_POINTS[0], STAR_POINTS[1] + 1))
        radii = np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(*STAR_INNER))
        a = -math.pi / 2 + np.arange(2 * n) * (math.pi / n)
        return np.stack([radii * np.cos(a), radii * np.sin(a)], axis=1), None
    raise ValueError(f"unknown shape {name!r}")


def _place(outer, hole, angle, box):
    """Rotate the unit polygons by ``angle`` and map the outer outline's extent exactly onto ``box``
    (x0, y0, w, h): the box is then the shape's full (amodal) extent, and stretching gives the aspect ratio."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    outer = outer @ rot.T
    hole = None if hole is None else hole @ rot.T
    lo, hi = outer.min(axis=0), outer.max(axis=0)
    x0, y0, w, h = box
    scale = np.array([w, h]) / (hi - lo)
    offset = np.array([x0, y0])
    fit = lambda p: (p - lo) * scale + offset  # noqa: E731
    return fit(outer), (None if hole is None else fit(hole))


# ---------------------------------------------------------------------------------------------------------------
# Scene generation.
# ---------------------------------------------------------------------------------------------------------------

def _background(rng, width, height):
    """Gradient + low-frequency blotches + (maybe) stripes or checkers, float32 ``[H, W, 3]`` in 0-255."""
    # Open grids and float32 colours throughout: full float64 [H, W, 3] temporaries made this the slowest step.
    ys, xs = np.ogrid[0:height, 0:width]
    ys, xs = ys.astype(np.float32), xs.astype(np.float32)
    colour = lambda: rng.uniform(0, 255, 3).astype(np.float32)  # noqa: E731
    a = rng.uniform(0, 2 * math.pi)
    proj = xs * np.float32(math.cos(a)) + ys * np.float32(math.sin(a))
    t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    c1, c2 = colour(), colour()
    img = c1 + (c2 - c1) * t[..., None]

    # Blotches: a coarse random grid upsampled smoothly, so the background is not a clean gradient.
    grid = rng.uniform(0, 255, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3)).astype(np.uint8)
    blotch = np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), dtype=np.float32)
    img += (blotch - np.float32(127.5)) * np.float32(rng.uniform(*BLOTCH_AMPLITUDE) / 127.5)

    if rng.random() < PATTERN_PROBABILITY:
        b = rng.uniform(0, math.pi)
        cb, sb = np.float32(math.cos(b)), np.float32(math.sin(b))
        period = np.float32(rng.uniform(*PATTERN_PERIOD))
        u = np.floor((xs * cb + ys * sb) / period)
        if rng.random() < 0.5:
            pattern = u % 2                                                          # stripes
        else:
            pattern = (u + np.floor((ys * cb - xs * sb) / period)) % 2               # checkers
        alpha = (np.float32(rng.uniform(*PATTERN_ALPHA)) * pattern)[..., None]
        img = img * (1 - alpha) + colour() * alpha
    return np.clip(img, 0, 255, out=img)


def _draw_clutter(rng, image):
    """Unlabeled distractors on the PIL ``image``: lines, arcs and scribbles (nothing filled, so
    nothing that could pass for an unlabeled object)."""
    width, height = image.size
    side = min(width, height)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(CLUTTER_COUNT[0], CLUTTER_COUNT[1] + 1))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        size = rng.uniform(*CLUTTER_SIZE) * side
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        kind = rng.integers(3)
        if kind == 0:
            a = rng.uniform(0, 2 * math.pi)
            dx, dy = size * math.cos(a), size * math.sin(a)
            draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=colour, width=int(rng.integers(1, 5)))
        elif kind == 1:
            # An open arc (at most 3/4 of a turn) so it cannot pass for a ring.
            start = rng.uniform(0, 360)
            draw.arc([cx - size, cy - size * rng.uniform(0.5, 1.5), cx + size, cy + size],
                     start, start + rng.uniform(40, 270), fill=colour, width=int(rng.integers(1, 5)))
        else:
            # An open scribble (a random walk drawn as a line). Filled blobs were tried and dropped: with few
            # vertices they look like the unlabeled squares and triangles they are not, i.e. label noise.
            steps = rng.normal(0, size / 3, (int(rng.integers(4, 9)), 2)).cumsum(axis=0) + (cx, cy)
            draw.line([tuple(p) for p in steps], fill=colour, width=int(rng.integers(1, 4)), joint="curve")


def _sample_box(rng, width, height):
    """A box (x0, y0, w, h) inside the image: log-uniform size and aspect ratio, uniform position. Coordinates are
    rounded down to 1/100 px so the rounded box written to JSON still lies inside the image."""
    longest = math.exp(rng.uniform(math.log(MIN_OBJECT_SIZE), math.log(MAX_OBJECT_FRACTION * min(width, height))))
    aspect = math.exp(rng.uniform(-math.log(MAX_ASPECT), math.log(MAX_ASPECT)))
    w, h = (longest, longest / aspect) if aspect >= 1 else (longest * aspect, longest)
    w, h = max(w, MIN_SHORT_SIDE), max(h, MIN_SHORT_SIDE)
    w, h = math.floor(w * 100) / 100, math.floor(h * 100) / 100
    x0 = math.floor(rng.uniform(0, width - w) * 100) / 100
    y0 = math.floor(rng.uniform(0, height - h) * 100) / 100
    return x0, y0, w, h


def _render_image(seed, split_index, image_index):
    """One scene: ``(uint8 RGB array [H, W, 3], objects)``, objects as dicts with ``label`` (index into
    :data:`CATEGORIES`), ``bbox`` (x0, y0, w, h floats inside the image), ``area`` (the shape's pixels, including
    any later-occluded part) and ``polygon`` (the outer outline, image coordinates)."""
    rng = np.random.default_rng([seed, split_index, image_index])
    width = int(rng.integers(IMAGE_WIDTH_RANGE[0], IMAGE_WIDTH_RANGE[1] + 1))
    height = int(rng.integers(IMAGE_HEIGHT_RANGE[0], IMAGE_HEIGHT_RANGE[1] + 1))

    image = Image.fromarray(_background(rng, width, height).astype(np.uint8))
    _draw_clutter(rng, image)
    canvas = np.asarray(image, dtype=np.float32).copy()

    # owner[y, x] = index of the labeled shape visible at that pixel (-1: none); visible[k] counts its pixels.
    owner = np.full((height, width), -1, dtype=np.int16)
    visible, objects = [], []
    for _ in range(int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))):
        label = int(rng.integers(len(CATEGORIES)))
        for _ in range(PLACEMENT_TRIES):
            box = _sample_box(rng, width, height)
            outer, hole = _place(*_shape_polygons(CATEGORIES[label][1], rng), rng.uniform(0, 2 * math.pi), box)
            # Rasterize only the box's pixel window: cheap, and the shape cannot reach outside it.
            x0, y0 = int(box[0]), int(box[1])
            x1, y1 = min(width, math.ceil(box[0] + box[2]) + 1), min(height, math.ceil(box[1] + box[3]) + 1)
            mask_img = Image.new("L", (x1 - x0, y1 - y0), 0)
            mdraw = ImageDraw.Draw(mask_img)
            mdraw.polygon([tuple(p) for p in outer - (x0, y0)], fill=255)
            if hole is not None:
                mdraw.polygon([tuple(p) for p in hole - (x0, y0)], fill=0)
            mask = np.asarray(mask_img) > 0
            area = int(mask.sum())
            if area == 0:
                continue
            window = owner[y0:y1, x0:x1]
            covered = np.bincount(window[mask].astype(np.int64) + 1, minlength=len(visible) + 1)[1:]
            if any(visible[k] - covered[k] < (1 - MAX_HIDDEN_FRACTION) * objects[k]["area"]
                   for k in range(len(visible)) if covered[k]):
                continue  # would hide an earlier shape too much: try another place
            break
        else:
            continue  # no acceptable place: drop this object

        for k in range(len(visible)):
            visible[k] -= int(covered[k])
        window[mask] = len(objects)
        visible.append(area)

        # Colour: random, but distinct from what lies under the shape, so it is visible at all.
        under = canvas[y0:y1, x0:x1][mask].mean(axis=0)
        for _ in range(COLOUR_TRIES):
            colour = rng.uniform(0, 255, 3)
            if np.linalg.norm(colour - under) >= MIN_CONTRAST:
                break
        # Linear shading across the shape, so a shape is not a flat colour the detector could key on.
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        a = rng.uniform(0, 2 * math.pi)
        ramp = ((xs - box[0]) * math.cos(a) + (ys - box[1]) * math.sin(a)) / max(box[2], box[3])
        fill = colour + rng.uniform(*SHADING_RANGE) * (ramp[..., None] - 0.5)
        canvas[y0:y1, x0:x1][mask] = fill[mask]
        objects.append({"label": label, "bbox": box, "area": area, "polygon": outer})

    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(*PIXEL_NOISE_SIGMA)
    pixels = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < BLUR_PROBABILITY:
        pixels = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(rng.uniform(*BLUR_RADIUS))))
    return pixels, objects


# ---------------------------------------------------------------------------------------------------------------
# The COCO-faithful variant (``coco_categories=True``).
# ---------------------------------------------------------------------------------------------------------------

def _uncompressed_rle(mask):
    """A boolean mask ``[H, W]`` as COCO's uncompressed RLE (what COCO's crowd regions hold): run lengths over the
    pixels in column-major order, alternating background and foreground, starting with background."""
    flat = np.asarray(mask, dtype=np.uint8).reshape(-1, order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = [int(c) for c in np.diff(bounds)]
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _keyhole(outer, hole):
    """One polygon for a shape with a hole: the outline, a cut to the hole, the hole backwards, back along the cut.
    A COCO polygon has no holes, but COCO's rasterizer fills by crossing parity, so the cut (run twice) adds no
    pixel and the hole stays empty: the segmentation is the ring, not the disc."""
    if hole is None:
        return outer
    j = int(np.argmin(((hole - outer[0]) ** 2).sum(axis=1)))
    back = np.concatenate([hole[j::-1], hole[:j:-1]])
    return np.concatenate([outer, outer[:1], back, back[:1]])


def _coco_shape(rng, label, box, width, height):
    """Shape ``label`` (index into :data:`COCO_SHAPE_CATEGORIES`) fitted to ``box`` (x0, y0, w, h, which may run
    off the image), as COCO's tools see it: ``(polygon, mask, area, window)`` with ``polygon`` the flat coordinate
    list as written (clipped to the image, 2 decimals), ``mask`` bool ``[H, W]`` and ``area`` its pixels by
    pycocotools' rasterizer, ``window`` (x0, y0, x1, y1) the mask's pixel extent; ``mask`` is None if empty."""
    from pycocotools import mask as mask_utils  # the rasterizer COCO's areas and evaluation use

    outer, hole = _place(*_shape_polygons(COCO_SHAPE_CATEGORIES[label][0], rng), rng.uniform(0, 2 * math.pi), box)
    polygon = _clip_polygon(_keyhole(outer, hole), width, height)
    rle = mask_utils.frPyObjects([polygon], height, width)[0]
    area = int(mask_utils.area(rle))
    if area == 0:
        return polygon, None, 0, None
    x, y, w, h = (int(v) for v in mask_utils.toBbox(rle))
    return polygon, mask_utils.decode(rle).astype(bool), area, (x, y, x + w, y + h)


def _coco_box(rng, width, height, longest_range, max_aspect, truncate):
    """A box (x0, y0, w, h): log-uniform longest side in ``longest_range`` (pixels, capped by the image) and aspect
    ratio in [1/max_aspect, max_aspect]; inside the image, or with ``truncate`` up to :data:`COCO_TRUNCATION` of
    each side outside it (the shape is then clipped at the border, as COCO's truncated objects are)."""
    hi = min(longest_range[1], width, height)
    lo = min(longest_range[0], hi)
    longest = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    aspect = math.exp(rng.uniform(-math.log(max_aspect), math.log(max_aspect)))
    w, h = (longest, longest / aspect) if aspect >= 1 else (longest * aspect, longest)
    w, h = min(max(w, MIN_SHORT_SIDE), width), min(max(h, MIN_SHORT_SIDE), height)
    out = COCO_TRUNCATION if truncate else 0.0
    return rng.uniform(-out * w, width - (1 - out) * w), rng.uniform(-out * h, height - (1 - out) * h), w, h


def _luma(rgb):
    return float(np.dot(rgb, (0.299, 0.587, 0.114)))  # ITU-R 601, as PIL's convert("L")


def _paint(rng, canvas, mask, window, gray):
    """Fill ``mask`` on ``canvas`` with a random shaded colour that stands out from what lies under it (in
    brightness too when the image will be stored grayscale)."""
    x0, y0, x1, y1 = window
    m = mask[y0:y1, x0:x1]
    under = canvas[y0:y1, x0:x1][m].mean(axis=0)
    for _ in range(COLOUR_TRIES):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - under) >= MIN_CONTRAST and (
                not gray or abs(_luma(colour) - _luma(under)) >= MIN_LUMA_CONTRAST):
            break
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    ramp = ((xs - x0) * math.cos(a) + (ys - y0) * math.sin(a)) / max(x1 - x0, y1 - y0)
    fill = colour + rng.uniform(*SHADING_RANGE) * (ramp[..., None] - 0.5)
    canvas[y0:y1, x0:x1][m] = fill[m]


def _coco_crowd(rng, canvas, occupied, gray):
    """A crowd: many small shapes of one category, overlapping one another inside an ellipse, painted on
    ``canvas``; returns ``(label, mask)``, the mask being their union (one ``iscrowd`` region, as COCO annotates
    a crowd). Called first, on an empty ``occupied``, which it then marks."""
    height, width = occupied.shape
    label = int(rng.integers(len(COCO_SHAPE_CATEGORIES)))
    rx = max(rng.uniform(*CROWD_EXTENT) * width, 16.0)
    ry = max(rng.uniform(*CROWD_EXTENT) * height, 16.0)
    cx, cy = rng.uniform(rx, width - rx), rng.uniform(ry, height - ry)
    sizes = (max(8.0, CROWD_MEMBER_SIZE[0] * min(rx, ry)), max(9.0, CROWD_MEMBER_SIZE[1] * min(rx, ry)))
    union = np.zeros((height, width), dtype=bool)
    for _ in range(int(rng.integers(CROWD_MEMBERS[0], CROWD_MEMBERS[1] + 1))):
        r, t = math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        _, _, w, h = _coco_box(rng, width, height, sizes, 1.8, False)
        x0 = min(max(cx + rx * r * math.cos(t) - w / 2, 0.0), width - w)
        y0 = min(max(cy + ry * r * math.sin(t) - h / 2, 0.0), height - h)
        _, mask, area, window = _coco_shape(rng, label, (x0, y0, w, h), width, height)
        if area:
            _paint(rng, canvas, mask, window, gray)
            union |= mask
    occupied |= union
    return label, union


def _choose(rng, weighted):
    names, weights = zip(*weighted)
    return names[int(rng.choice(len(names), p=np.array(weights) / sum(weights)))]


def _coco_frame(rng, frame):
    """``(width, height)`` for a frame kind: COCO-like sizes (at most 640 px a side), or very wide or tall."""
    if frame == "normal":
        long_side = int(rng.integers(COCO_LONG_SIDE[0], COCO_LONG_SIDE[1] + 1))
        short_side = int(round(long_side / rng.uniform(*COCO_ASPECT)))
        return (long_side, short_side) if rng.random() < COCO_LANDSCAPE else (short_side, long_side)
    long_side = int(rng.integers(COCO_EXTREME_LONG_SIDE[0], COCO_EXTREME_LONG_SIDE[1] + 1))
    short_side = int(round(long_side / rng.uniform(*COCO_EXTREME_ASPECT)))
    return (long_side, short_side) if frame == "wide" else (short_side, long_side)


def _render_coco_image(seed, split_index, image_index):
    """One scene of the COCO-faithful variant: ``(picture, kind, objects)``. ``picture`` is the PIL image in the
    mode it is stored in, ``kind`` the ``(layout, format, frame)`` it was drawn as, ``objects`` dicts with
    ``label`` and ``iscrowd``, and either ``mask`` (a crowd) or ``polygon`` and ``area``. Objects never overlap
    (crowd members overlap each other), so each segmentation is exactly the pixels painted for it."""
    rng = np.random.default_rng([seed, split_index, image_index, COCO_STREAM])
    if image_index < len(COCO_SCHEDULE):
        kind = COCO_SCHEDULE[image_index]
    else:
        kind = tuple(_choose(rng, options) for options in (COCO_LAYOUTS, COCO_FORMATS, COCO_FRAMES))
    layout, fmt, frame = kind
    gray = fmt == "gray"
    width, height = _coco_frame(rng, frame)
    short = min(width, height)

    image = Image.fromarray(_background(rng, width, height).astype(np.uint8))
    _draw_clutter(rng, image)
    canvas = np.asarray(image, dtype=np.float32).copy()
    occupied = np.zeros((height, width), dtype=bool)
    objects = []
    if layout == "crowd":
        label, mask = _coco_crowd(rng, canvas, occupied, gray)
        if mask.any():  # always, but an empty region would have no bbox
            objects.append({"label": label, "iscrowd": 1, "mask": mask})

    # The objects to place: (longest side range in px, max aspect, may be truncated, allowed area range).
    def regular():
        return ((COCO_MIN_OBJECT_SIZE, COCO_MAX_OBJECT_FRACTION * short), MAX_ASPECT,
                bool(rng.random() < COCO_TRUNCATED), (COCO_MIN_AREA, math.inf))

    if layout == "many":
        n = int(rng.integers(COCO_MANY_OBJECTS[0], COCO_MANY_OBJECTS[1] + 1))
        plan = [(COCO_MANY_SIZE, 2.0, False, (COCO_MIN_AREA, SMALL_AREA - 1))] * n
    elif layout == "large":
        plan = [((0.7 * short, 0.95 * short), 1.3, False, (LARGE_AREA + 1, math.inf)),
                ((40.0, 110.0), 1.5, False, (SMALL_AREA + 1, LARGE_AREA - 1))]
        plan += [regular() for _ in range(int(rng.integers(0, 5)))]
    elif layout == "crowd":
        plan = [regular() for _ in range(int(rng.integers(1, 6)))]
    elif layout == "objects":
        plan = [regular() for _ in range(int(rng.integers(COCO_OBJECTS[0], COCO_OBJECTS[1] + 1)))]
    else:
        plan = []  # "empty": background and clutter only
    for longest, max_aspect, truncate, (min_area, max_area) in plan:
        # An object that must reach an area range (the "large" layout's two) gets more tries, each with a new
        # shape: a thin ring cannot be large in a small image.
        sized = min_area > COCO_MIN_AREA
        label = int(rng.integers(len(COCO_SHAPE_CATEGORIES)))
        for _ in range(SIZED_PLACEMENT_TRIES if sized else PLACEMENT_TRIES):
            if sized:
                label = int(rng.integers(len(COCO_SHAPE_CATEGORIES)))
            box = _coco_box(rng, width, height, longest, max_aspect, truncate)
            polygon, mask, area, window = _coco_shape(rng, label, box, width, height)
            if not min_area <= area <= max_area:
                continue
            x0, y0, x1, y1 = window
            if (occupied[y0:y1, x0:x1] & mask[y0:y1, x0:x1]).any():
                continue  # objects do not overlap: each segmentation stays exactly what is visible of it
            break
        else:
            continue  # no acceptable place: drop this object
        _paint(rng, canvas, mask, window, gray)
        occupied[y0:y1, x0:x1] |= mask[y0:y1, x0:x1]
        objects.append({"label": label, "iscrowd": 0, "polygon": polygon, "area": area})

    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(*PIXEL_NOISE_SIGMA)
    pixels = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < BLUR_PROBABILITY:
        pixels = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(rng.uniform(*BLUR_RADIUS))))
    picture = Image.fromarray(pixels)
    if fmt == "gray":
        picture = picture.convert("L")
    elif fmt == "rgba":
        # Alpha falls from opaque to half-transparent across the image; readers drop it (load_rgb keeps RGB).
        alpha = np.linspace(255, 128, width, dtype=np.float32)[None, :].repeat(height, axis=0)
        picture = Image.fromarray(np.dstack([pixels, alpha.astype(np.uint8)]), "RGBA")
    elif fmt == "palette":
        picture = picture.quantize(256)
    return picture, kind, objects


def _coco_bbox(polygon, width, height):
    """``[x, y, w, h]`` of a written polygon (its extent, as COCO's bboxes are), kept inside the image."""
    xs, ys = polygon[0::2], polygon[1::2]
    x, y = min(xs), min(ys)
    w, h = round(max(xs) - x, 2), round(max(ys) - y, 2)
    while x + w > width:  # float rounding of x + w
        w = round(w - 0.01, 2)
    while y + h > height:
        h = round(h - 0.01, 2)
    return [float(x), float(y), float(w), float(h)]


def _mask_bbox(mask):
    """``[x, y, w, h]`` of a mask's pixels (what pycocotools' ``toBbox`` gives for its RLE)."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def _coco_records(seed, split_index, image_index, image_id, first_ann_id):
    """The COCO-faithful variant's image ``i``: ``(picture, file_name, save settings, image record, annotation
    records, kind)``, records with COCO's fields in COCO's order."""
    picture, kind, objects = _render_coco_image(seed, split_index, image_index)
    width, height = picture.size
    is_png = picture.mode in ("RGBA", "P")
    file_name = f"{image_id:012d}.{'png' if is_png else 'jpg'}"
    record = {"license": LICENSE["id"], "file_name": file_name, "coco_url": "", "height": height, "width": width,
              "date_captured": FIXED_DATE, "flickr_url": "", "id": image_id}
    annotations = []
    for obj in objects:
        category_id = COCO_SHAPE_CATEGORIES[obj["label"]][1]
        ann_id = first_ann_id + len(annotations)
        if obj["iscrowd"]:
            mask = obj["mask"]
            annotations.append({"segmentation": _uncompressed_rle(mask), "area": float(mask.sum()), "iscrowd": 1,
                                "image_id": image_id, "bbox": _mask_bbox(mask), "category_id": category_id,
                                "id": CROWD_ID_OFFSET + ann_id})
        else:
            annotations.append({"segmentation": [obj["polygon"]], "area": float(obj["area"]), "iscrowd": 0,
                                "image_id": image_id, "bbox": _coco_bbox(obj["polygon"], width, height),
                                "category_id": category_id, "id": ann_id})
    return picture, file_name, PNG_SETTINGS if is_png else JPEG_SETTINGS, record, annotations, kind


def _coco_features(kinds, annotations, images):
    """What a split of the COCO-faithful variant holds, counted (the summary's ``features``)."""
    sizes = {im["id"]: (im["width"], im["height"]) for im in images}
    crowd = [a for a in annotations if a["iscrowd"]]
    objects = [a for a in annotations if not a["iscrowd"]]
    per_image = {}
    for a in objects:
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1

    def at_border(a):
        (x, y, w, h), (width, height) = a["bbox"], sizes[a["image_id"]]
        return x == 0 or y == 0 or x + w >= width - 0.01 or y + h >= height - 0.01

    annotated = {a["image_id"] for a in annotations}
    aspects = [w / h for w, h in sizes.values()]
    return {
        "crowd_regions": len(crowd),
        "images_with_crowd": len({a["image_id"] for a in crowd}),
        "empty_images": sum(i not in annotated for i in sizes),
        "grayscale_images": sum(k[1] == "gray" for k in kinds),
        "png_images": {"rgba": sum(k[1] == "rgba" for k in kinds), "palette": sum(k[1] == "palette" for k in kinds)},
        "objects_by_area": {"small": sum(a["area"] < SMALL_AREA for a in objects),
                            "medium": sum(SMALL_AREA <= a["area"] <= LARGE_AREA for a in objects),
                            "large": sum(a["area"] > LARGE_AREA for a in objects)},
        "objects_at_border": sum(at_border(a) for a in objects),
        "max_objects_per_image": max(per_image.values(), default=0),
        "images_with_30_or_more_objects": sum(n >= 30 for n in per_image.values()),
        "aspect_range": [round(min(aspects), 2), round(max(aspects), 2)] if aspects else [],
    }


# ---------------------------------------------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------------------------------------------

def _clip_polygon(polygon, width, height):
    # The outline lies inside the box up to float error; clip so the segmentation never leaves the image.
    p = np.clip(polygon, [0, 0], [width, height])
    return [round(float(v), 2) for v in p.reshape(-1)]


def _plain_records(seed, split_index, image_index, image_id, first_ann_id):
    """The plain sample's image ``i``: ``(picture, file_name, save settings, image record, annotation records)``.
    Its bytes must never change for a given seed (see the module docstring)."""
    pixels, objects = _render_image(seed, split_index, image_index)
    height, width = pixels.shape[:2]
    file_name = f"{image_id:012d}.jpg"  # COCO's naming
    record = {"id": image_id, "file_name": file_name, "width": width, "height": height,
              "license": LICENSE["id"], "date_captured": FIXED_DATE}
    annotations = []
    for obj in objects:
        x0, y0, w, h = obj["bbox"]
        annotations.append({
            "id": first_ann_id + len(annotations),
            "image_id": image_id,
            "category_id": CATEGORIES[obj["label"]][0],
            "bbox": [x0, y0, w, h],
            "area": float(obj["area"]),
            "iscrowd": 0,
            "segmentation": [_clip_polygon(obj["polygon"], width, height)],
        })
    return Image.fromarray(pixels), file_name, JPEG_SETTINGS, record, annotations


def _write_split(output, split, split_index, num_images, seed, coco_categories):
    """Write the images and the annotation file of one split; return its summary (``images``, ``annotations``
    and, for the COCO-faithful variant, ``features``)."""
    image_dir = os.path.join(output, split)
    ann_path = os.path.join(output, "annotations", f"instances_{split}.json")
    os.makedirs(image_dir, exist_ok=True)
    remove_dead_temporaries(image_dir)  # left by a run killed while writing
    # Remove the old annotation file first: if we crash while rewriting images, no JSON describes a mix.
    if os.path.exists(ann_path):
        os.remove(ann_path)

    base = split_index * ID_STRIDE
    images, annotations, names, kinds = [], [], set(), []
    for i in range(num_images):
        first_ann_id = base + len(annotations) + 1
        if coco_categories:
            picture, file_name, settings, record, anns, kind = _coco_records(seed, split_index, i, base + i + 1,
                                                                              first_ann_id)
            kinds.append(kind)
        else:
            picture, file_name, settings, record, anns = _plain_records(seed, split_index, i, base + i + 1,
                                                                        first_ann_id)
        names.add(file_name)
        with atomic_path(os.path.join(image_dir, file_name)) as tmp:
            picture.save(tmp, **settings)
        images.append(record)
        annotations.extend(anns)

    # Images left over from an earlier, larger run would be listed by nobody; remove only files we would name.
    for name in os.listdir(image_dir):
        if _IMAGE_NAME.match(name) and name not in names:
            os.remove(os.path.join(image_dir, name))

    if coco_categories:
        dataset = {
            "info": dict(COCO_INFO, description=f"{COCO_INFO['description']}, seed {seed}, {split}"),
            "licenses": [COCO_LICENSE],
            "images": images,
            "annotations": annotations,
            "categories": [{"supercategory": sup, "id": cid, "name": name}
                           for _, cid, name, sup in sorted(COCO_SHAPE_CATEGORIES, key=lambda c: c[1])],
        }
    else:
        dataset = {
            "info": dict(INFO, description=f"{INFO['description']}, seed {seed}, {split}"),
            "licenses": [LICENSE],
            "categories": [{"id": cid, "name": name, "supercategory": SUPERCATEGORY} for cid, name in CATEGORIES],
            "images": images,
            "annotations": annotations,
        }
    write_bytes(ann_path, json.dumps(dataset, separators=(",", ":")).encode())
    summary = {"images": len(images), "annotations": len(annotations)}
    if coco_categories:
        summary["features"] = _coco_features(kinds, annotations, images)
    return summary


def make_sample_dataset(output, seed=0, num_train=DEFAULT_NUM_TRAIN, num_val=DEFAULT_NUM_VAL, coco_categories=False):
    """Write the synthetic dataset under ``output`` (created if needed) in the COCO 2017 layout.

    ``seed`` (an int >= 0) determines every byte written; different seeds give different data. With
    ``coco_categories`` the COCO-faithful variant is written (see the module docstring): COCO's category ids and
    names, crowd regions, empty, grayscale and PNG images, extreme aspect ratios, crowded images.

    Existing files of the layout are replaced (and surplus ``NNNNNNNNNNNN.jpg``/``.png`` images of an earlier run
    removed); other files in ``output`` are left alone. Every file is written under a temporary name and renamed
    into place (:func:`cv.detection.utils.fileio.atomic_path`); each annotation file is written last, so it is either
    absent or complete and consistent with the images.

    Returns a summary: ``{"output", "seed", "categories": [{"id", "name"}], "splits": {split: {"images",
    "annotations"}}}``; the COCO-faithful variant also has ``"coco_categories": True`` and per split
    ``"features"`` (crowd regions, empty, grayscale and PNG images, objects by COCO area range, ...).
    """
    seed = int(seed)
    counts = {"train2017": int(num_train), "val2017": int(num_val)}
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    for split, n in counts.items():
        if not 0 <= n < ID_STRIDE:
            raise ValueError(f"number of {split} images must be in [0, {ID_STRIDE}), got {n}")
    output = os.fspath(output)
    os.makedirs(os.path.join(output, "annotations"), exist_ok=True)
    remove_dead_temporaries(os.path.join(output, "annotations"))

    splits = {split: _write_split(output, split, split_index, counts[split], seed, bool(coco_categories))
              for split, split_index in SPLITS}
    if coco_categories:
        categories = [{"id": cid, "name": name} for _, cid, name, _ in sorted(COCO_SHAPE_CATEGORIES,
                                                                            key=lambda c: c[1])]
    else:
        categories = [{"id": cid, "name": name} for cid, name in CATEGORIES]
    summary = {"output": os.path.abspath(output), "seed": seed, "categories": categories, "splits": splits}
    if coco_categories:
        summary["coco_categories"] = True
    return summary


# ---------------------------------------------------------------------------------------------------------------
# The Pascal VOC variant (make_voc_sample_dataset): the same pictures, in VOC's layout.
# ---------------------------------------------------------------------------------------------------------------

# The VOC class each shape stands for, in the shape order of CATEGORIES (circle, square, triangle, ring, cross,
# star). aeroplane and tvmonitor are VOC's first and last labels (1 and 20), where an off-by-one would show.
VOC_SHAPE_CLASSES = ("aeroplane", "tvmonitor", "boat", "diningtable", "person", "bird")
# (image set, split index): train and val draw their pictures as the COCO sample's train2017 and val2017 do, test
# from a stream of its own; trainval is train + val, as in VOC.
VOC_SPLITS = (("train", 0), ("val", 1), ("test", 2))
VOC_DIFFICULT_SIZE = 20.0         # an object whose longer box side is below this (pixels) is marked difficult
VOC_YEAR = "2007"
_VOC_FILE = re.compile(r"^\d{6}\.(jpg|xml)$")


def _voc_xml(name, width, height, objects):
    """VOC's annotation file for one image: 1-based inclusive integer boxes covering each shape's extent."""
    lines = ["<annotation>", f"\t<folder>VOC{VOC_YEAR}</folder>", f"\t<filename>{name}.jpg</filename>",
             "\t<source>", f"\t\t<database>{INFO['description']}</database>", "\t</source>",
             "\t<size>", f"\t\t<width>{width}</width>", f"\t\t<height>{height}</height>", "\t\t<depth>3</depth>",
             "\t</size>", "\t<segmented>0</segmented>"]
    for obj in objects:
        x0, y0, w, h = obj["bbox"]
        xmin, ymin, xmax, ymax = math.floor(x0) + 1, math.floor(y0) + 1, math.ceil(x0 + w), math.ceil(y0 + h)
        truncated = int(xmin == 1 or ymin == 1 or xmax >= width or ymax >= height)
        difficult = int(max(w, h) < VOC_DIFFICULT_SIZE)
        lines += ["\t<object>", f"\t\t<name>{VOC_SHAPE_CLASSES[obj['label']]}</name>", "\t\t<pose>Unspecified</pose>",
                  f"\t\t<truncated>{truncated}</truncated>", f"\t\t<difficult>{difficult}</difficult>",
                  "\t\t<bndbox>", f"\t\t\t<xmin>{xmin}</xmin>", f"\t\t\t<ymin>{ymin}</ymin>",
                  f"\t\t\t<xmax>{xmax}</xmax>", f"\t\t\t<ymax>{ymax}</ymax>", "\t\t</bndbox>", "\t</object>"]
    return "\n".join(lines + ["</annotation>", ""])


def make_voc_sample_dataset(output, seed=0, num_train=DEFAULT_NUM_TRAIN, num_val=DEFAULT_NUM_VAL,
                            num_test=DEFAULT_NUM_VAL):
    """Write the sample dataset in Pascal VOC's layout, as VOC's tarballs extract::

        output/VOCdevkit/VOC2007/JPEGImages/000001.jpg ...     (train, then val, then test images)
        output/VOCdevkit/VOC2007/Annotations/000001.xml ...
        output/VOCdevkit/VOC2007/ImageSets/Main/{train,val,trainval,test}.txt

    The train and val pictures are the plain sample's (:func:`make_sample_dataset` with the same seed), the shapes
    named by VOC classes (:data:`VOC_SHAPE_CLASSES`); objects smaller than :data:`VOC_DIFFICULT_SIZE` are marked
    difficult, those touching the border truncated. Deterministic in ``seed``; files written aside and renamed into
    place, the image set lists last (so a list never names a file not yet written); surplus ``NNNNNN.jpg/.xml``
    of an earlier, larger run removed.

    Returns ``{"output", "seed", "format": "voc", "year", "classes", "splits": {set: {"images", "objects",
    "difficult"}}}``.
    """
    seed = int(seed)
    counts = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if any(n < 0 for n in counts.values()) or sum(counts.values()) >= 10 ** 6:
        raise ValueError(f"the numbers of images must be >= 0 and below 10^6 in all, got {counts}")
    folder = os.path.join(os.fspath(output), "VOCdevkit", f"VOC{VOC_YEAR}")
    dirs = {d: os.path.join(folder, *d.split("/")) for d in ("Annotations", "ImageSets/Main", "JPEGImages")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
        remove_dead_temporaries(d)
    for set_name in ("train", "val", "trainval", "test"):  # no list may describe a mix while files are rewritten
        path = os.path.join(dirs["ImageSets/Main"], f"{set_name}.txt")
        if os.path.exists(path):
            os.remove(path)

    lists, summary, number = {}, {}, 0
    for set_name, split_index in VOC_SPLITS:
        lists[set_name], stats = [], {"images": 0, "objects": 0, "difficult": 0}
        for i in range(counts[set_name]):
            number += 1
            name = f"{number:06d}"
            pixels, objects = _render_image(seed, split_index, i)
            height, width = pixels.shape[:2]
            with atomic_path(os.path.join(dirs["JPEGImages"], f"{name}.jpg")) as tmp:
                Image.fromarray(pixels).save(tmp, **JPEG_SETTINGS)
            xml = _voc_xml(name, width, height, objects)
            write_bytes(os.path.join(dirs["Annotations"], f"{name}.xml"), xml.encode())
            lists[set_name].append(name)
            stats["images"] += 1
            stats["objects"] += len(objects)
            stats["difficult"] += xml.count("<difficult>1</difficult>")
        summary[set_name] = stats
    lists["trainval"] = lists["train"] + lists["val"]
    written = {f"{n}.{ext}" for names in lists.values() for n in names for ext in ("jpg", "xml")}
    for d in (dirs["JPEGImages"], dirs["Annotations"]):
        for f in os.listdir(d):
            if _VOC_FILE.match(f) and f not in written:
                os.remove(os.path.join(d, f))
    for set_name in ("train", "val", "trainval", "test"):
        write_bytes(os.path.join(dirs["ImageSets/Main"], f"{set_name}.txt"),
                    "".join(f"{n}\n" for n in lists[set_name]).encode())
    return {"output": os.path.abspath(output), "seed": seed, "format": "voc", "year": VOC_YEAR,
            "classes": list(VOC_SHAPE_CLASSES), "splits": summary}


# ---------------------------------------------------------------------------------------------------------------
# The YOLO variant: the plain sample converted to YOLO's layout.
# ---------------------------------------------------------------------------------------------------------------

YOLO_SPLITS = (("train2017", "train"), ("val2017", "val"))  # COCO sample split -> YOLO split
YOLO_DECIMALS = 6                 # normalised coordinates: a millionth of a 512 px side is far below a pixel
_YOLO_FILE = re.compile(r"^\d{12}\.(jpg|txt)$")


def _yolo_lines(image, annotations, class_of):
    """The label file of one COCO image: ``class cx cy w h`` normalised, one line per annotation."""
    w, h = image["width"], image["height"]
    lines = []
    for ann in annotations:
        x, y, bw, bh = ann["bbox"]
        values = ((x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h)
        lines.append(f"{class_of[ann['category_id']]} " + " ".join(f"{v:.{YOLO_DECIMALS}f}" for v in values) + "\n")
    return "".join(lines)


def make_yolo_sample_dataset(output, seed=0, num_train=DEFAULT_NUM_TRAIN, num_val=DEFAULT_NUM_VAL):
    """Write the plain sample in YOLO's layout, as ultralytics reads it::

        output/data.yaml                                   (train: images/train, val: images/val, names: ...)
        output/images/{train,val}/000000000001.jpg ...     (the COCO sample's files, byte for byte)
        output/labels/{train,val}/000000000001.txt ...     (class cx cy w h, normalised; class = index in CATEGORIES)

    Made by converting :func:`make_sample_dataset`'s output (written in ``output/.coco_sample``, removed after):
    the same images and boxes, the class of category ``CATEGORIES[k]`` being ``k``, so YOLO's labels (class + 1)
    are the contiguous labels the COCO sample gets. Deterministic in ``seed``; files written aside and renamed into
    place, ``data.yaml`` last; surplus images and label files of an earlier, larger run removed.

    Returns ``{"output", "seed", "format": "yolo", "names", "splits": {split: {"images", "objects"}}}``.
    """
    import shutil

    output = os.fspath(output)
    source = os.path.join(output, ".coco_sample")
    if os.path.exists(os.path.join(output, "data.yaml")):
        os.remove(os.path.join(output, "data.yaml"))  # no data.yaml may describe a mix while files are rewritten
    make_sample_dataset(source, seed=seed, num_train=num_train, num_val=num_val)
    class_of = {cid: k for k, (cid, _) in enumerate(CATEGORIES)}
    summary = {}
    for coco_split, split in YOLO_SPLITS:
        images, labels = os.path.join(output, "images", split), os.path.join(output, "labels", split)
        for d in (images, labels):
            os.makedirs(d, exist_ok=True)
            remove_dead_temporaries(d)
        with open(os.path.join(source, "annotations", f"instances_{coco_split}.json")) as f:
            coco = json.load(f)
        by_image = {}
        for ann in coco["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        written = set()
        for image in coco["images"]:
            stem = os.path.splitext(image["file_name"])[0]
            os.replace(os.path.join(source, coco_split, image["file_name"]), os.path.join(images, image["file_name"]))
            write_bytes(os.path.join(labels, f"{stem}.txt"),
                        _yolo_lines(image, by_image.get(image["id"], []), class_of).encode())
            written |= {image["file_name"], f"{stem}.txt"}
        for d in (images, labels):
            for f in os.listdir(d):
                if _YOLO_FILE.match(f) and f not in written:
                    os.remove(os.path.join(d, f))
        summary[split] = {"images": len(coco["images"]), "objects": len(coco["annotations"])}
    shutil.rmtree(source)
    names = [name for _, name in CATEGORIES]
    text = ("# The synthetic shapes sample dataset in YOLO layout (scripts/make_sample_dataset.py --format yolo).\n"
            "train: images/train\nval: images/val\nnames:\n" + "".join(f"  {k}: {n}\n" for k, n in enumerate(names)))
    write_bytes(os.path.join(output, "data.yaml"), text.encode())
    return {"output": os.path.abspath(output), "seed": int(seed), "format": "yolo", "names": names, "splits": summary}
