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
category ids to contiguous labels is exercised.

Everything is a function of ``seed`` alone: image ``i`` of split ``s`` draws from
``np.random.default_rng([seed, s, i])``, JPEGs are written with fixed settings and the JSON holds no timestamps,
so the same seed gives byte-identical files (with the same Pillow/libjpeg) and any image can be regenerated alone.

Only NumPy and Pillow are imported here (no OneFlow), so the generator is quick to start.
"""
import json
import math
import os
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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
    "description": "Synthetic shapes sample dataset (cv.detection.sample_dataset)",
    "version": "1.0",
    "year": 2024,
    "contributor": "OneFlow model zoo",
    "date_created": FIXED_DATE,
}
LICENSE = {"id": 1, "name": "CC0 1.0 (synthetic data)", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}

_IMAGE_NAME = re.compile(r"^\d{12}\.jpg$")


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
# Files.
# ---------------------------------------------------------------------------------------------------------------

def _replace_atomically(path, write):
    """Write ``path`` via a temporary name in the same directory and rename it into place, so a crash leaves the
    old file or nothing, never a partial one. ``write(f)`` gets a binary file object."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _clip_polygon(polygon, width, height):
    # The outline lies inside the box up to float error; clip so the segmentation never leaves the image.
    p = np.clip(polygon, [0, 0], [width, height])
    return [round(float(v), 2) for v in p.reshape(-1)]


def _write_split(output, split, split_index, num_images, seed):
    """Write the images and the annotation file of one split; return ``(num_images, num_annotations)``."""
    image_dir = os.path.join(output, split)
    ann_path = os.path.join(output, "annotations", f"instances_{split}.json")
    os.makedirs(image_dir, exist_ok=True)
    # Remove the old annotation file first: if we crash while rewriting images, no JSON describes a mix.
    if os.path.exists(ann_path):
        os.remove(ann_path)

    base = split_index * ID_STRIDE
    images, annotations, names = [], [], set()
    for i in range(num_images):
        pixels, objects = _render_image(seed, split_index, i)
        height, width = pixels.shape[:2]
        image_id = base + i + 1
        file_name = f"{image_id:012d}.jpg"  # COCO's naming
        names.add(file_name)
        _replace_atomically(os.path.join(image_dir, file_name),
                            lambda f, im=Image.fromarray(pixels): im.save(f, **JPEG_SETTINGS))
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                       "license": LICENSE["id"], "date_captured": FIXED_DATE})
        for obj in objects:
            x0, y0, w, h = obj["bbox"]
            annotations.append({
                "id": base + len(annotations) + 1,
                "image_id": image_id,
                "category_id": CATEGORIES[obj["label"]][0],
                "bbox": [x0, y0, w, h],
                "area": float(obj["area"]),
                "iscrowd": 0,
                "segmentation": [_clip_polygon(obj["polygon"], width, height)],
            })

    # Images left over from an earlier, larger run would be listed by nobody; remove only files we would name.
    for name in os.listdir(image_dir):
        if _IMAGE_NAME.match(name) and name not in names:
            os.remove(os.path.join(image_dir, name))

    dataset = {
        "info": dict(INFO, description=f"{INFO['description']}, seed {seed}, {split}"),
        "licenses": [LICENSE],
        "categories": [{"id": cid, "name": name, "supercategory": SUPERCATEGORY} for cid, name in CATEGORIES],
        "images": images,
        "annotations": annotations,
    }
    _replace_atomically(ann_path, lambda f: f.write(json.dumps(dataset, separators=(",", ":")).encode()))
    return len(images), len(annotations)


def make_sample_dataset(output, seed=0, num_train=DEFAULT_NUM_TRAIN, num_val=DEFAULT_NUM_VAL):
    """Write the synthetic dataset under ``output`` (created if needed) in the COCO 2017 layout.

    ``seed`` (an int >= 0) determines every byte written; different seeds give different data. Existing files of
    the layout are replaced (and surplus ``NNNNNNNNNNNN.jpg`` images of an earlier run removed); other files in
    ``output`` are left alone. Each annotation file is written last and by rename, so it is either absent or
    complete and consistent with the images.

    Returns a summary: ``{"output", "seed", "categories": [{"id", "name"}], "splits": {split: {"images",
    "annotations"}}}``.
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

    splits = {}
    for split, split_index in SPLITS:
        n_images, n_annotations = _write_split(output, split, split_index, counts[split], seed)
        splits[split] = {"images": n_images, "annotations": n_annotations}
    return {
        "output": os.path.abspath(output),
        "seed": seed,
        "categories": [{"id": cid, "name": name} for cid, name in CATEGORIES],
        "splits": splits,
    }
