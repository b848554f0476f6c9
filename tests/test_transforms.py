"""SSD training augmentation (cv/detection/data/transforms.py): exact hand-made cases per transform, invariants over
many random draws of the train preset, equivalence of the fused preset with the literal chain, the eval preset,
and that inputs are never modified. Small images keep it fast (a few seconds)."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cv.detection.data.transforms import (Compose, HorizontalFlip, IoUCrop, PhotometricDistort,
                                     PhotometricParams, Plan, Resize, ZoomOut, grey_mean, ssd_eval_transform,
                                     ssd_train_transform, to_chw_float)
from cv.detection.models.box_ops_numpy import box_iou
from reference import literal_chain

SIZE, SSD300_MEAN = (300, 300), (123, 117, 104)  # SSD300's input size and mean colour (0-255)
MEAN = np.array(SSD300_MEAN, dtype=np.uint8)


def textured(width, height, seed=0):
    """A smooth-but-busy RGB array (waves plus noise), so that any pixel error shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    waves = np.sin(x / 5.0)[..., None] * [60, 30, -50] + np.cos(y / 7.0)[..., None] * [40, -60, 30]
    return np.clip(128 + waves + rng.normal(0, 10, (height, width, 3)), 0, 255).astype(np.uint8)


# Two images with several boxes each: boxes touching the borders, tiny boxes, overlapping boxes; unique labels.
CASES = [
    (textured(160, 120, 0), np.array([[0, 0, 40, 30], [50, 40, 120, 110], [100, 10, 101.5, 11],
                                      [150, 100, 160, 120], [60, 50, 90, 80]], np.float32)),
    (textured(96, 128, 1), np.array([[0, 60, 96, 128], [10, 10, 12, 13], [40, 0, 70, 30], [85.5, 120, 96, 128]],
                                    np.float32)),
]


def labels_for(boxes):
    return np.arange(1, len(boxes) + 1, dtype=np.int64)


def expected_boxes(boxes, labels, plan, size):
    """Output boxes re-derived from the plan independently of the module: an affine map per axis, flip, clip."""
    (out_h, out_w), (left, top), (x0, y0, x1, y1) = size, plan.offset, plan.patch
    b = boxes.astype(np.float64) + [left, top, left, top]
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    keep = (cx > x0) & (cx < x1) & (cy > y0) & (cy < y1)
    b = (b[keep] - [x0, y0, x0, y0]) * np.tile([out_w / (x1 - x0), out_h / (y1 - y0)], 2)
    b = np.clip(b, 0, [out_w, out_h, out_w, out_h])
    if plan.flip:
        b = np.stack([out_w - b[:, 2], b[:, 1], out_w - b[:, 0], b[:, 3]], axis=1)
    return b.reshape(-1, 4), labels[keep]


# --- module hygiene ------------------------------------------------------------------------------------------------
def test_does_not_import_oneflow():
    code = "import sys, cv.detection.data.transforms; assert 'oneflow' not in sys.modules, 'oneflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the train preset over many draws ------------------------------------------------------------------------------
def test_train_preset_invariants_and_box_tracking():
    transform = ssd_train_transform(SIZE, SSD300_MEAN)
    seen = set()
    zooms = crops = flips = 0
    for case, (array, boxes) in enumerate(CASES):
        labels = labels_for(boxes)
        image = Image.fromarray(array) if case == 0 else array    # both image conventions
        for seed in range(150):
            out, out_boxes, out_labels = transform(image, boxes, labels, np.random.default_rng(seed))
            assert out.dtype == np.float32 and out.shape == (3, 300, 300) and out.flags.c_contiguous
            assert 0 <= out.min() and out.max() <= 1
            assert out_boxes.dtype == np.float32 and out_boxes.shape == (len(out_labels), 4)
            assert out_labels.dtype == np.int64 and len(set(out_labels.tolist())) == len(out_labels)
            assert (out_boxes[:, :2] >= 0).all() and (out_boxes[:, 2:] <= 300).all()
            assert (out_boxes[:, 2:] > out_boxes[:, :2]).all()
            # Each output box is the transformed version of the input box with its label.
            plan = transform.sample(array.shape[1::-1], boxes, np.random.default_rng(seed))
            want_boxes, want_labels = expected_boxes(boxes, labels, plan, (300, 300))
            np.testing.assert_array_equal(out_labels, want_labels)
            np.testing.assert_allclose(out_boxes, want_boxes, atol=2e-3)
            # A crop keeps at least one box; its shape follows the recipe.
            x0, y0, x1, y1 = plan.patch
            if plan.patch != (0, 0) + plan.canvas_size:
                crops += 1
                canvas_w, canvas_h = plan.canvas_size
                assert len(out_labels) >= 1
                assert 0.5 <= (x1 - x0) / (y1 - y0) <= 2
                assert x1 - x0 >= int(0.3 * canvas_w) and y1 - y0 >= int(0.3 * canvas_h)
            zooms += plan.zoom is not None
            flips += plan.flip
            seen.add(out.tobytes())
    assert len(seen) >= 295                  # different seeds give different outputs
    assert 100 < zooms < 200 and 100 < flips < 200 and crops > 150


def test_train_preset_is_deterministic():
    transform = ssd_train_transform(SIZE, SSD300_MEAN)
    array, boxes = CASES[0]
    for seed in range(5):
        a = transform(array, boxes, labels_for(boxes), np.random.default_rng(seed))
        b = transform(array, boxes, labels_for(boxes), np.random.default_rng(seed))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_train_preset_size_and_mean_parameters():
    transform = ssd_train_transform(size=(64, 96), mean=(10, 20, 30))
    array, boxes = CASES[1]
    for seed in range(20):
        out, out_boxes, _ = transform(array, boxes, labels_for(boxes), np.random.default_rng(seed))
        assert out.shape == (3, 64, 96)
        assert (out_boxes[:, 2] <= 96).all() and (out_boxes[:, 3] <= 64).all()
    assert transform.zoom_out.fill == (10, 20, 30)


def test_fused_preset_matches_literal_chain():
    """Same random decisions, identical boxes and labels, pixels equal up to interpolation-level differences."""
    transform = ssd_train_transform(SIZE, SSD300_MEAN)
    chain = literal_chain(transform)
    for array, boxes in CASES:
        labels = labels_for(boxes)
        for seed in range(25):
            out, out_boxes, out_labels = transform(array, boxes, labels, np.random.default_rng(seed))
            ref_image, ref_boxes, ref_labels = chain(array, boxes, labels, np.random.default_rng(seed))
            np.testing.assert_array_equal(out_boxes, ref_boxes)
            np.testing.assert_array_equal(out_labels, ref_labels)
            assert np.abs(out - to_chw_float(ref_image)).mean() < 2.5 / 255


def test_fused_preset_by_hand():
    """One plan of the fused preset worked out by hand: expected_boxes and the literal chain above are derived from
    the module's own plans and steps; these numbers are not."""
    transform = ssd_train_transform(SIZE, SSD300_MEAN)
    boxes = np.array([[10, 10, 30, 20], [70, 30, 95, 50], [0, 0, 8, 6], [5, 20, 20, 40]], np.float32)
    # A 100x50 image zoomed out 2x onto a 200x100 canvas at (20, 10), the patch (30, 10)-(130, 60) of it (100x50),
    # flipped, resized to 300x300 (x3 across, x6 down); no colour distortion.
    plan = Plan(PhotometricParams((), None), (2.0, (20, 10)), (200, 100), (20, 10), (30, 10, 130, 60), True)
    out_boxes, out_labels = transform.apply_to_boxes(boxes, np.array([1, 2, 3, 4]), plan)
    # On the canvas (+20, +10): [30, 20, 50, 30], [90, 40, 115, 60], [20, 10, 28, 16], [25, 30, 40, 50].
    # Centres in the patch? (40, 25) yes; (102.5, 50) yes; (24, 13) no (x < 30): box 3 dropped; (32.5, 40) yes.
    # Clipped to the patch, minus (30, 10): [0, 10, 20, 20], [60, 30, 85, 50], [0, 20, 10, 40] (x1 25 -> 30).
    # Flipped in 100 (x -> 100 - x): [80, 10, 100, 20], [15, 30, 40, 50], [90, 20, 100, 40].
    # Scaled by (3, 6):
    np.testing.assert_allclose(out_boxes, [[240, 60, 300, 120], [45, 180, 120, 300], [270, 120, 300, 240]])
    np.testing.assert_array_equal(out_labels, [1, 2, 4])
    # The pixels: the patch's last 10 canvas columns (120-130) lie right of the image, fill; scaled x3 that is output
    # columns 270-300, and 0-30 once flipped. A one-colour image stays that colour under bilinear resizing.
    colour = (200, 50, 20)
    pixels = np.asarray(transform.render(Image.new("RGB", (100, 50), colour), plan))
    assert pixels.shape == (300, 300, 3)
    assert (pixels[:, :30] == MEAN).all() and (pixels[:, 30:] == colour).all()


def test_fused_preset_fill_is_undistorted_mean():
    """With zoom-out, the output outside the image is exactly the mean colour, whatever the distortion."""
    transform = ssd_train_transform(SIZE, SSD300_MEAN)
    array, boxes = CASES[0]
    checked = 0
    for seed in range(40):
        plan = transform.sample((160, 120), boxes, np.random.default_rng(seed))
        if plan.zoom is None or not plan.photometric.ops:
            continue
        out, _, _ = transform(array, boxes, labels_for(boxes), np.random.default_rng(seed))
        (left, top), (x0, y0, x1, y1) = plan.offset, plan.patch
        # Output columns/rows wholly left/above of the image (if any) are pure fill.
        cols = int(np.floor((left - x0) * 300 / (x1 - x0)))
        rows = int(np.floor((top - y0) * 300 / (y1 - y0)))
        pixels = np.rint(out * 255).astype(np.uint8).transpose(1, 2, 0)
        if plan.flip:
            pixels = pixels[:, ::-1]
        if cols > 0:
            assert (pixels[:, :cols] == MEAN).all()
            checked += 1
        if rows > 0:
            assert (pixels[:rows] == MEAN).all()
            checked += 1
    assert checked >= 5


# --- eval preset ---------------------------------------------------------------------------------------------------
def test_eval_preset_is_conversion_only():
    array, boxes = CASES[0]
    labels = labels_for(boxes)
    for image in (array, Image.fromarray(array)):
        out, out_boxes, out_labels = ssd_eval_transform()(image, boxes, labels, np.random.default_rng(0))
        np.testing.assert_array_equal(out, np.asarray(image, np.float32).transpose(2, 0, 1) / 255)
        assert out.dtype == np.float32 and out.shape == (3, 120, 160)
        np.testing.assert_array_equal(out_boxes, boxes)
        np.testing.assert_array_equal(out_labels, labels)
        assert out_boxes.dtype == np.float32 and out_labels.dtype == np.int64


# --- each transform, exact hand-made cases -------------------------------------------------------------------------
def test_flip_exact():
    array = textured(10, 6)
    out, out_boxes, out_labels = HorizontalFlip().flip(array, np.array([[1, 2, 4, 5]], np.float32), np.array([7]))
    np.testing.assert_array_equal(np.asarray(out), array[:, ::-1])
    np.testing.assert_array_equal(out_boxes, [[6, 2, 9, 5]])
    np.testing.assert_array_equal(out_labels, [7])
    # p=0 never flips, p=1 always does
    same = HorizontalFlip(p=0.0)(array, out_boxes, out_labels, np.random.default_rng(0))
    np.testing.assert_array_equal(np.asarray(same[0]), array)
    flipped = HorizontalFlip(p=1.0)(array, np.array([[1, 2, 4, 5]], np.float32), [7], np.random.default_rng(0))
    np.testing.assert_array_equal(flipped[1], [[6, 2, 9, 5]])


def test_zoom_out_exact():
    array = textured(10, 8)
    boxes = np.array([[0, 0, 10, 8], [2, 3, 4, 6]], np.float32)
    canvas, out_boxes, out_labels = ZoomOut(SSD300_MEAN).expand(array, boxes, np.array([1, 2]), 2.0, (3, 5))
    pixels = np.asarray(canvas)
    assert pixels.shape == (16, 20, 3)
    np.testing.assert_array_equal(pixels[5:13, 3:13], array)
    mask = np.ones((16, 20), bool)
    mask[5:13, 3:13] = False
    assert (pixels[mask] == MEAN).all()
    np.testing.assert_array_equal(out_boxes, [[3, 5, 13, 13], [5, 8, 7, 11]])
    np.testing.assert_array_equal(out_labels, [1, 2])
    with pytest.raises(ValueError):
        ZoomOut(SSD300_MEAN).expand(array, boxes, [1, 2], 2.0, (11, 0))


def test_zoom_out_call_uses_sample_and_expand():
    array, boxes = CASES[0]
    zoom = ZoomOut(mean=(0, 255, 0), p=1.0)
    drawn = zoom.sample((160, 120), np.random.default_rng(3))
    ratio, (left, top) = drawn
    assert 1 <= ratio <= 4
    canvas, out_boxes, _ = zoom(array, boxes, labels_for(boxes), np.random.default_rng(3))
    assert canvas.size == ZoomOut.canvas_size((160, 120), ratio)
    np.testing.assert_array_equal(np.asarray(canvas)[top:top + 120, left:left + 160], array)
    np.testing.assert_array_equal(out_boxes, boxes + [left, top, left, top])
    assert ZoomOut(SSD300_MEAN, p=0.0)(array, boxes, labels_for(boxes), np.random.default_rng(3))[0].size == (160, 120)


def test_crop_exact():
    array = textured(100, 80)
    boxes = np.array([[25, 25, 35, 35],      # inside: kept as is
                      [10, 30, 40, 50],      # centre (25, 40) inside, sticks out left: kept, clipped
                      [0, 0, 30, 30],        # centre (15, 15) outside, overlaps: dropped
                      [70, 60, 100, 80],     # outside: dropped
                      [50, 50, 80, 70]],     # centre (65, 60) inside, sticks out right and bottom: clipped
                     np.float32)
    labels = np.array([11, 12, 13, 14, 15])
    patch = (20, 20, 70, 65)
    out, out_boxes, out_labels = IoUCrop().crop(array, boxes, labels, patch)
    np.testing.assert_array_equal(np.asarray(out), array[20:65, 20:70])
    np.testing.assert_array_equal(out_labels, [11, 12, 15])
    np.testing.assert_array_equal(out_boxes, [[5, 5, 15, 15], [0, 10, 20, 30], [30, 30, 50, 45]])
    with pytest.raises(ValueError):
        IoUCrop().crop(array, boxes, labels, (50, 0, 120, 10))


def test_crop_sample_satisfies_its_constraint():
    array, boxes = CASES[0]
    for min_iou in (0.1, 0.3, 0.5):
        crop = IoUCrop(options=(min_iou,))
        for seed in range(10):
            patch = crop.sample((160, 120), boxes, np.random.default_rng(seed))
            assert patch is not None
            x0, y0, x1, y1 = patch
            assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 120
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            inside = (cx > x0) & (cx < x1) & (cy > y0) & (cy < y1)
            iou = box_iou(np.array([patch], np.float64), boxes.astype(np.float64))[0]
            assert (inside & (iou >= min_iou)).any()


def test_crop_gives_up_after_bounded_work():
    array = textured(200, 200)
    tiny = np.array([[10, 10, 12, 12]], np.float32)    # IoU with any patch of >= 60x60 is far below 0.9
    crop = IoUCrop(options=(0.9,), rounds=3)
    out, out_boxes, out_labels = crop(array, tiny, [1], np.random.default_rng(0))
    np.testing.assert_array_equal(np.asarray(out), array)
    np.testing.assert_array_equal(out_boxes, tiny)
    assert IoUCrop(options=(None,)).sample((200, 200), tiny, np.random.default_rng(0)) is None


def test_resize_exact():
    array = textured(40, 20)
    out, out_boxes, _ = Resize((10, 80))(array, np.array([[4, 2, 40, 20]], np.float32), [1])
    assert out.size == (80, 10)
    np.testing.assert_allclose(out_boxes, [[8, 1, 80, 10]])


def test_photometric_operations():
    array = textured(30, 20)
    image = Image.fromarray(array)
    distort = PhotometricDistort()
    same = distort.distort(image, PhotometricParams((), None))
    np.testing.assert_array_equal(np.asarray(same), array)
    swapped = distort.distort(image, PhotometricParams((), (2, 0, 1)))
    np.testing.assert_array_equal(np.asarray(swapped), array[..., [2, 0, 1]])
    bright = distort.distort(image, PhotometricParams((("brightness", 1.1),), None))
    np.testing.assert_array_equal(np.asarray(bright), np.clip(np.rint(array * 1.1), 0, 255))
    contrast = distort.distort(image, PhotometricParams((("contrast", 0.5),), None), centre=100.0)
    np.testing.assert_array_equal(np.asarray(contrast), np.clip(np.rint(100 + (array - 100.0) * 0.5), 0, 255))
    grey = Image.new("RGB", (5, 5), (90, 90, 90))
    for name, value in (("saturation", 1.5), ("hue", 0.05)):   # no colour: nothing to saturate or rotate
        out = distort.distort(grey, PhotometricParams(((name, value),), None))
        assert np.abs(np.asarray(out, np.int64) - 90).max() <= 1
    hue = np.asarray(distort.distort(Image.new("RGB", (2, 2), (200, 40, 40)), PhotometricParams((("hue", 1 / 3),),
                                                                                                None)))
    assert hue[0, 0, 1] > 150 and hue[0, 0, 0] < 80        # red turned green


def test_photometric_commutes_with_crop_and_flip():
    """The premise of the fused preset: with the input's grey mean as contrast centre, the distortion is a
    per-pixel map, so it commutes exactly with cropping and flipping."""
    image = Image.fromarray(textured(64, 48))
    distort = PhotometricDistort(p=1.0, channel_p=1.0)
    for seed in range(10):
        params = distort.sample(np.random.default_rng(seed))
        whole = distort.distort(image, params)
        patch = (5, 7, 50, 40)
        np.testing.assert_array_equal(np.asarray(distort.distort(image.crop(patch), params, grey_mean(image))),
                                      np.asarray(whole.crop(patch)))
        flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        np.testing.assert_array_equal(np.asarray(distort.distort(flipped, params, grey_mean(image))),
                                      np.asarray(whole)[:, ::-1])


def test_photometric_draws_and_call():
    distort = PhotometricDistort()
    seen_ops = set()
    for seed in range(200):
        params = distort.sample(np.random.default_rng(seed))
        for name, value in params.ops:
            seen_ops.add(name)
            lo, hi = dict(zip(PhotometricDistort.OPS, distort.ranges))[name]
            assert lo <= value <= hi
        assert len({name for name, _ in params.ops}) == len(params.ops)
    assert seen_ops == set(PhotometricDistort.OPS)
    array, boxes = CASES[0]
    out, out_boxes, out_labels = distort(array, boxes, labels_for(boxes), np.random.default_rng(0))
    assert out.mode == "RGB" and out.size == (160, 120)
    np.testing.assert_array_equal(out_boxes, boxes)


# --- edge cases ----------------------------------------------------------------------------------------------------
def all_transforms():
    train = ssd_train_transform(SIZE, SSD300_MEAN)
    return [PhotometricDistort(p=1.0), ZoomOut(SSD300_MEAN, p=1.0), IoUCrop(), HorizontalFlip(p=1.0), Resize((30, 40)),
            Compose([ZoomOut(SSD300_MEAN, p=1.0), HorizontalFlip(p=1.0)]), train,
            literal_chain(train), ssd_eval_transform()]


def test_zero_boxes_pass_through_every_transform():
    array = textured(50, 40)
    for transform in all_transforms():
        for seed in range(5):
            _, out_boxes, out_labels = transform(array, np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                                                 np.random.default_rng(seed))
            assert out_boxes.shape == (0, 4) and out_boxes.dtype == np.float32
            assert out_labels.shape == (0,) and out_labels.dtype == np.int64
    out = IoUCrop()(array, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.random.default_rng(0))[0]
    np.testing.assert_array_equal(np.asarray(out), array)


def test_inputs_never_modified():
    array, boxes = CASES[0]
    labels = labels_for(boxes)
    keep = (array.copy(), boxes.copy(), labels.copy())
    image = Image.fromarray(array)
    image_bytes = image.tobytes()
    for transform in all_transforms():
        for seed in range(5):
            for img in (array, image):
                transform(img, boxes, labels, np.random.default_rng(seed))
    ZoomOut(SSD300_MEAN).expand(array, boxes, labels, 2.0, (1, 1))
    IoUCrop().crop(array, boxes, labels, (10, 10, 100, 100))
    HorizontalFlip().flip(array, boxes, labels)
    for before, after in zip(keep, (array, boxes, labels)):
        np.testing.assert_array_equal(before, after)
    assert image.tobytes() == image_bytes
