"""The GPU self-check (``bash scripts/gpu_check.sh``, :mod:`cv.detection.engine.gpu_check`). No GPU here: its checks
run with ``"cpu"`` against ``"cpu"`` on tiny_ssd (the same code, identical results), its comparison helpers are
shown to fail on hand-built differences, and the command itself says in one line that there is nothing to check.
"""
import os
import subprocess

import numpy as np
import oneflow as flow
import pytest

from cv.detection.engine import gpu_check
from cv.detection.engine.gpu_check import Result, compare_detections, within
from cv.detection.models import box_ops
from tests.conftest import REPO, tiny_ssd

# tiny_ssd's losses move clearly at this rate (SSD300 from random weights needs a smaller one: gpu_check.TRAIN_LR).
TINY_LR = 0.01
NO_CUDA_LINE = "gpu_check: no CUDA device is visible to OneFlow on this machine: nothing to check (exit 0)"


def detections(boxes, scores, labels):
    return {"boxes": flow.tensor(boxes, dtype=flow.float32).reshape(-1, 4), "scores": flow.tensor(scores),
            "labels": flow.tensor(labels, dtype=flow.int64)}


# --- the comparison helpers ------------------------------------------------------------------------------------


def test_within_fails_beyond_the_tolerance_and_names_the_largest_difference():
    ok, text = within("losses", [10.0, 20.3], [10.0, 20.0], rtol=0.01)
    assert not ok and text == "losses max diff 0.015 rel (tol 0.01 rel)"
    assert within("losses", [10.0, 20.3], [10.0, 20.0], rtol=0.02)[0]
    assert within("boxes", [1.0, 2.05], [1.0, 2.0], atol=0.1) == (True, "boxes max diff 0.05 (tol 0.1)")
    assert not within("losses", [float("nan")], [1.0], rtol=1.0)[0]
    assert within("losses", [1.0], [1.0, 2.0], rtol=1.0) == (False, "losses: shapes (1,) and (2,) differ")


def test_compare_detections_allows_near_ties_in_either_order_but_not_other_differences():
    reference = [detections([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40]], [0.9, 0.5, 0.5 - 1e-6], [1, 2, 3])]
    swapped = [detections([[0, 0, 10, 10], [30, 30, 40, 40], [5, 5, 20, 20]], [0.9, 0.5 - 1e-6, 0.5], [1, 3, 2])]
    assert compare_detections(reference, reference, 0.1, 1e-5) == ([], 0.0, 0.0)
    problems, _, score_diff = compare_detections(swapped, reference, 0.1, 1e-5)
    assert problems == [] and score_diff == 0.0
    problems, _, _ = compare_detections(swapped, reference, 0.1, 1e-5, exact_order=True)
    assert problems == ["image 0: detection 1 comes at position 2 (2 out of order)"]

    moved = [detections([[0, 0, 10, 10.5], [5, 5, 20, 20], [30, 30, 40, 40]], [0.9, 0.5, 0.5 - 1e-6], [1, 2, 3])]
    problems, _, _ = compare_detections(moved, reference, 0.1, 1e-5)
    assert problems[0] == ("image 0: expected detection 0 (label 1, score 0.9, box [0.0, 0.0, 10.0, 10.0]) has no "
                           "match (1 unmatched)")
    relabelled = [detections([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40]], [0.9, 0.5, 0.5 - 1e-6], [7, 2, 3])]
    assert len(compare_detections(relabelled, reference, 0.1, 1e-5)[0]) == 2  # one lost, one unexpected
    rescored = [detections([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40]], [0.9, 0.5, 0.49], [1, 2, 3])]
    assert compare_detections(rescored, reference, 0.1, 1e-5)[0]


def test_compare_detections_allows_a_different_cut_only_at_near_equal_scores():
    reference = [detections([[0, 0, 10, 10], [5, 5, 20, 20]], [0.9, 0.5], [1, 2])]
    cut_at_a_near_tie = [detections([[0, 0, 10, 10], [30, 30, 40, 40]], [0.9, 0.5 - 1e-6], [1, 3])]
    assert compare_detections(cut_at_a_near_tie, reference, 0.1, 1e-5)[0] == []
    assert len(compare_detections(cut_at_a_near_tie, reference, 0.1, 1e-5, exact_order=True)[0]) == 2
    missing = [detections([[0, 0, 10, 10]], [0.9], [1])]
    assert compare_detections(missing, reference, 0.1, 1e-5)[0] == [
        "image 0: expected detection 1 (label 2, score 0.5, box [5.0, 5.0, 20.0, 20.0]) has no match (1 unmatched)"]


# --- the checks, cpu against cpu -------------------------------------------------------------------------------


def test_tie_case_keeps_the_lower_index_of_equal_scores():
    boxes = flow.tensor(gpu_check.TIE_BOXES, dtype=flow.float32)
    kept = box_ops.batched_nms(boxes, flow.tensor(gpu_check.TIE_SCORES),
                               flow.tensor(gpu_check.TIE_CATEGORIES, dtype=flow.int64), 0.45)
    assert kept.numpy().tolist() == gpu_check.TIE_KEPT == [3, 0, 2, 5]


def test_tied_head_outputs_give_exact_ties_that_the_order_comparison_sees():
    model = tiny_ssd().eval()
    heads, grids = gpu_check.tied_head_outputs(model)
    with flow.no_grad():
        out = model.detect(heads, grids, [model.size])
    scores = out[0]["scores"].numpy()
    assert len(scores) == 200 and len(np.unique(scores)) == 3 and np.sum(scores[1:] == scores[:-1]) == 197
    assert set(out[0]["labels"].numpy().tolist()) == {1, 2}
    # Two tied detections exchanged: the strict comparison of the tie check names them.
    swapped = {k: v.clone() for k, v in out[0].items()}
    i = int(np.flatnonzero((scores[1:] == scores[:-1]) & (swapped["labels"].numpy()[1:] !=
                                                           swapped["labels"].numpy()[:-1]))[0])
    for v in swapped.values():
        v[[i, i + 1]] = v[[i + 1, i]]
    problems, _, _ = compare_detections([swapped], out, 1e-3, 1e-7, exact_order=True)
    assert problems == [f"image 0: detection {i} comes at position {i + 1} (2 out of order)"]


def test_checks_pass_cpu_against_cpu_with_identical_results():
    model = tiny_ssd()
    results = {r.name: r for r in (gpu_check.check_detections("cpu", "cpu", model),
                                   gpu_check.check_tie_order("cpu", "cpu", model),
                                   gpu_check.check_amp("cpu", model=model, lr=TINY_LR),
                                   gpu_check.check_graph("cpu", model=model, lr=TINY_LR))}
    assert all(r.passed is True for r in results.values()), results
    assert results["detections"].detail.startswith("4 images, 800 detections; boxes max diff 0 px (tol 0.1), "
                                                   "scores 0 (tol 1e-05)")
    assert "batched_nms keeps [3, 0, 2, 5]" in results["tie order"].detail
    # On CPU autocast changes nothing and scaling by a power of two is exact: the same losses, bit for bit.
    assert "0 skipped by the loss scaler (now 65536); losses max diff 0 rel (tol 0.02 rel)" in results["amp"].detail
    assert "losses max diff" in results["graph mode"].detail
    assert set(results["amp"].speeds) == {"training float32", "training amp"}
    assert results["detections"].speeds["inference"] > 0


def test_amp_check_fails_when_the_loss_scale_is_not_divided_out(monkeypatch):
    """A scaler whose unscale forgets the division: steps 65536 times too large, caught (non-finite or off)."""
    monkeypatch.setattr(gpu_check._RecordingScaler, "unscale_and_check",
                        lambda self, parameters: self.update(True) or True)
    result = gpu_check.check_amp("cpu", model=tiny_ssd(), lr=TINY_LR)
    assert result.passed is False


def test_two_processes_are_skipped_without_two_gpus():
    result = gpu_check.check_two_processes("cuda", gpus=1)
    assert result == Result("two processes", None, "skipped: 1 GPU visible, two needed")


@pytest.mark.slow
def test_two_processes_on_cpu_train_with_identical_weights(tmp_path, monkeypatch):
    from tests.conftest import rank_weight_digests, rank_weights_env

    env = rank_weights_env(tmp_path)  # each rank writes the digests of its weights
    for name in ("PYTHONPATH", "SSD300_TEST_WEIGHTS_DIR"):
        monkeypatch.setenv(name, env[name])
    result = gpu_check.check_two_processes("cpu")
    assert result.passed is True, result.detail
    assert result.detail.startswith("1 epoch of train.py on 4 images, 2 processes: weights identical on all 2 ranks")
    rank0, rank1 = rank_weight_digests(tmp_path)  # the check's verdict agrees with the weights themselves
    assert len(rank0) == 71 and rank0 == rank1


# --- the report and the command --------------------------------------------------------------------------------


def test_report_has_a_line_per_check_the_speeds_and_the_verdict():
    results = [Result("detections", True, "4 images, 800 detections", 12.4, {"inference": 55.25}),
               Result("amp", False, "losses max diff 0.5 rel (tol 0.02 rel)", 3.0, {"training amp": 30.0}),
               Result("two processes", None, "skipped: 1 GPU visible, two needed")]
    report = gpu_check.format_report(results, ["oneflow 0.9.0 (CUDA 11.7 build)", "1 GPU(s): Tesla T4"], "cuda")
    assert report.splitlines() == [
        "SSD300-VGG16 GPU self-check (bash scripts/gpu_check.sh)",
        "oneflow 0.9.0 (CUDA 11.7 build)",
        "1 GPU(s): Tesla T4",
        "PASS  detections    4 images, 800 detections  [12 s]",
        "FAIL  amp           losses max diff 0.5 rel (tol 0.02 rel)  [3 s]",
        "SKIP  two processes skipped: 1 GPU visible, two needed",
        "speed on cuda (images/s; inference batch 4 with post-processing, training batch 4 at 300x300): "
        "inference 55.2, training amp 30.0",
        "result: FAILED: amp"]


def test_environment_names_oneflow_and_its_cuda_build():
    lines = gpu_check.environment("cpu")
    assert len(lines) == 1 and lines[0].startswith(f"oneflow {flow.__version__} (CUDA 11.7 build), Python 3.10.")


def test_a_check_that_raises_is_a_fail_line_and_the_others_still_run():
    results = gpu_check.run_checks("nonsense", "cpu", tiny_ssd(), gpus=0)
    assert [(r.name, r.passed) for r in results] == [("detections", False), ("tie order", False), ("amp", False),
                                                     ("graph mode", False), ("two processes", None)]
    assert all(r.detail.split(":")[0].endswith("Error") for r in results[:4]), [r.detail for r in results]
    assert gpu_check.format_report(results, [], "nonsense").endswith(
        "result: FAILED: detections, tie order, amp, graph mode")


def test_main_without_cuda_says_so_in_one_line_and_succeeds(capsys):
    assert not flow.cuda.is_available()  # this machine: what the test is about
    assert gpu_check.main() == 0
    assert capsys.readouterr().out == NO_CUDA_LINE + "\n"


@pytest.mark.slow
def test_the_command_on_a_machine_without_cuda():
    out = subprocess.run(["bash", os.path.join(REPO, "scripts", "gpu_check.sh")], capture_output=True, text=True,
                         timeout=600, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == NO_CUDA_LINE + "\n"
