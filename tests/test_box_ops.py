import itertools

import numpy as np
import oneflow as flow
import pytest

from cv.detection.models import box_ops


def T(x, dtype=flow.float32):
    return flow.tensor(np.asarray(x), dtype=dtype)


def brute_force_nms(boxes, scores, threshold):
    """The textbook greedy NMS, one box at a time; ties in score keep the lower index first."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(iou_1to1(boxes[i], boxes[j]) <= threshold for j in kept):
            kept.append(i)
    return kept


def iou_1to1(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def random_boxes(rng, n, extent=100.0, max_size=40.0):
    xy = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(1, max_size, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def test_box_iou_hand_values():
    a = T([[0, 0, 10, 10], [0, 0, 20, 20]])
    b = T([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]])
    expected = [[1.0, 25 / 175, 0.0], [100 / 400, 100 / 400, 0.0]]
    np.testing.assert_allclose(box_ops.box_iou(a, b).numpy(), expected, rtol=1e-6)


def test_box_iou_broadcasts_over_batch():
    rng = np.random.default_rng(0)
    gt = random_boxes(rng, 6).reshape(2, 3, 4)
    anchors = random_boxes(rng, 5)
    batched = box_ops.box_iou(T(gt), T(anchors)).numpy()
    assert batched.shape == (2, 3, 5)
    for b, g, a in itertools.product(range(2), range(3), range(5)):
        assert batched[b, g, a] == pytest.approx(iou_1to1(gt[b, g], anchors[a]), rel=1e-5)


def test_box_coder_encodes_known_offsets_and_round_trips():
    coder = box_ops.BoxCoder((10, 10, 5, 5))
    reference = T([[0, 0, 10, 20]])
    box = T([[1, 2, 21, 42]])  # centre moves by (6, 12) = (0.6 w, 0.6 h); size doubles
    np.testing.assert_allclose(coder.encode(box, reference).numpy(), [[6.0, 6.0, 5 * np.log(2), 5 * np.log(2)]],
                               rtol=1e-6)
    rng = np.random.default_rng(1)
    boxes, refs = T(random_boxes(rng, 50)), T(random_boxes(rng, 50))
    np.testing.assert_allclose(coder.decode(coder.encode(boxes, refs), refs).numpy(), boxes.numpy(), atol=1e-3)


def test_box_coder_clamps_huge_size_offsets():
    coder = box_ops.BoxCoder((10, 10, 5, 5))
    decoded = coder.decode(T([[0, 0, 1e4, 1e4]]), T([[0, 0, 16, 16]])).numpy()
    np.testing.assert_allclose(decoded[0, 2] - decoded[0, 0], 1000.0, rtol=1e-4)  # 16 px grows to 1000 at most


def test_ssd_match_hand_written_iou_matrix():
    # 2 ground-truth boxes x 5 default boxes, and a padded second image.
    iou = T([[[0.6, 0.2, 0.1, 0.0, 0.55],
              [0.3, 0.7, 0.2, 0.1, 0.0]],
             [[0.0, 0.1, 0.3, 0.2, 0.0],   # best IoU 0.3 < 0.5: still keeps its best default box (2)
              [0.9, 0.9, 0.9, 0.9, 0.9]]])  # padding row: must match nothing
    valid = T([[True, True], [True, False]], dtype=flow.bool)
    matches = box_ops.ssd_match(iou, valid, 0.5).numpy()
    np.testing.assert_array_equal(matches, [[0, 1, -1, -1, 0], [-1, -1, 0, -1, -1]])


def test_ssd_match_forced_match_overrides_threshold_match():
    # Default box 0 overlaps gt 0 best (0.8), but it is gt 1's only decent box: gt 1 takes it.
    iou = T([[[0.8, 0.6], [0.4, 0.1]]])
    matches = box_ops.ssd_match(iou, T([[True, True]], dtype=flow.bool), 0.5).numpy()
    np.testing.assert_array_equal(matches, [[1, 0]])


@pytest.mark.parametrize("seed,threshold", [(0, 0.5), (1, 0.3), (2, 0.7), (3, 0.45)])
def test_nms_equals_brute_force_on_random_boxes(seed, threshold):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 300)
    scores = rng.uniform(0, 1, 300).astype(np.float32)
    kept = box_ops.nms(T(boxes), T(scores), threshold).numpy().tolist()
    assert kept == brute_force_nms(boxes, scores, threshold)
    assert 20 < len(kept) < 300  # the case is not trivial


def test_nms_ties_keep_lower_index_first():
    rng = np.random.default_rng(4)
    boxes = random_boxes(rng, 200)
    scores = rng.choice([0.2, 0.5, 0.9], 200).astype(np.float32)  # many equal scores
    kept = box_ops.nms(T(boxes), T(scores), 0.4).numpy().tolist()
    assert kept == brute_force_nms(boxes, scores, 0.4)


def test_nms_empty_input_and_full_suppression():
    empty = box_ops.nms(flow.zeros(0, 4), flow.zeros(0), 0.5)
    assert empty.shape == (0,) and empty.dtype == flow.int64
    same = T(np.tile([[10, 10, 50, 50]], (7, 1)))
    scores = T([0.1, 0.9, 0.3, 0.9, 0.5, 0.2, 0.8])
    assert box_ops.nms(same, scores, 0.5).numpy().tolist() == [1]


def test_nms_long_suppression_chain():
    # Each box overlaps only its neighbours (IoU 0.6): greedy keeps every second one. This is the worst case for
    # the fixed-point iteration, which must still give the exact greedy answer.
    n = 41
    boxes = np.array([[i * 4.0, 0, i * 4.0 + 16, 10] for i in range(n)], dtype=np.float32)
    scores = np.linspace(1, 0.5, n).astype(np.float32)
    kept = box_ops.nms(T(boxes), T(scores), 0.5).numpy().tolist()
    assert kept == brute_force_nms(boxes, scores, 0.5)


def test_batched_nms_keeps_categories_apart():
    rng = np.random.default_rng(5)
    boxes = random_boxes(rng, 240, extent=50)
    scores = rng.uniform(0, 1, 240).astype(np.float32)
    cats = rng.integers(0, 6, 240)
    kept = box_ops.batched_nms(T(boxes), T(scores), T(cats, flow.int64), 0.5).numpy().tolist()
    expected = []
    for c in range(6):
        idx = np.flatnonzero(cats == c)
        expected += [int(idx[k]) for k in brute_force_nms(boxes[idx], scores[idx], 0.5)]
    expected.sort(key=lambda i: (-scores[i], i))
    assert kept == expected


def test_clip_boxes_to_image():
    clipped = box_ops.clip_boxes_to_image(T([[-5, -5, 400, 200], [10, 20, 30, 40]]), (100, 300)).numpy()
    np.testing.assert_array_equal(clipped, [[0, 0, 300, 100], [10, 20, 30, 40]])


def test_the_cuda_branch_keeps_the_tie_order_whatever_the_kernel_does_with_ties():
    """batched_nms on CUDA hands the work to flow.nms (no GPU here). Whatever that kernel does with equal scores,
    the result must be the documented one: here a stand-in kernel that breaks ties the *wrong* way (higher index
    first) must give, through kernel_nms, exactly what the CPU path gives."""
    def kernel(boxes, scores, iou_threshold):  # greedy NMS visiting equal scores in reverse index order
        b, s = boxes.numpy(), scores.numpy()
        kept = []
        for i in sorted(range(len(s)), key=lambda i: (-s[i], -i)):
            if all(iou_1to1(b[i], b[j]) <= iou_threshold for j in kept):
                kept.append(i)
        return T(kept, flow.int64)

    rng = np.random.default_rng(6)
    boxes = random_boxes(rng, 300, extent=60)
    scores = rng.choice([0.2, 0.5, 0.9], 300).astype(np.float32)  # many ties
    cats = rng.integers(0, 4, 300)
    expected = box_ops.batched_nms(T(boxes), T(scores), T(cats, flow.int64), 0.45).numpy().tolist()
    through = box_ops.kernel_nms(T(boxes), T(scores), T(cats, flow.int64), 0.45, kernel).numpy().tolist()
    assert through == expected
    # Without kernel_nms's ordering, this kernel would give another answer: the test can tell.
    shifted = boxes + (cats * (boxes.max() + 1))[:, None].astype(np.float32)
    assert kernel(T(shifted), T(scores), 0.45).numpy().tolist() != expected
