"""Run SSD300-VGG16 on images, videos or a camera, or evaluate it on a COCO-format, Pascal VOC or YOLO split.

    cd cv/detection && bash ssd300_vgg16/infer.sh [--images PATH ... | --video FILE ... | --camera N]
                                                  [--weights SRC | --pretrained] [flags]

Images: for each image, the detections as JSON (boxes in pixels, score, label id and name, image size) and a copy
with the boxes drawn, plus one summary line on the console. ``--eval`` (alias ``--coco-eval``) instead prints the
evaluation table of a split: COCO's AP, or Pascal VOC's per-class AP and mAP. With no arguments: the sample
dataset's val images and the newest checkpoint ``train.sh`` wrote.
Videos and a camera (``--video``, ``--camera``): per input, the video with the boxes drawn (``<name>.mp4``) and
one JSON line of detections per frame (``<name>.jsonl``); see :mod:`cv.detection.deploy.video`.
"""
import argparse
import contextlib
import glob
import os
import time
import warnings

import oneflow as flow

from cv.detection.engine import checkpoint as ckpt
from cv.detection.utils import cli
from cv.detection.data import layouts as datasets
from cv.detection.utils import fileio, pipeline
from cv.detection.deploy import video
from cv.detection.data.coco import COCO_NUM_CLASSES
from cv.detection.data.base import make_loader
from cv.detection.engine.trainer import evaluate
from cv.detection.ssd300_vgg16 import OUTPUT_DIR, SAMPLE_DATA
from cv.detection.ssd300_vgg16.detector import (Detections, Detector, check_source, choose_backend, draw_detections,
                                                exported_detector, load_model)
from cv.detection.ssd300_vgg16.weights import MAX_WEIGHTS_MB_ENV, PRETRAINED_URL_ENV, weights_url

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
INFER_OUTPUT = os.path.join(OUTPUT_DIR, "inference")


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    w = p.add_argument_group("weights (default: the newest checkpoint of train.sh)")
    w.add_argument("--weights", help="a training checkpoint directory, a zoo tarball (path or http(s)/file URL), or "
                                     "an extracted zoo directory")
    w.add_argument("--pretrained", action="store_true",
                   help=f"the published COCO weights (box AP 25.1) from the model zoo; ${PRETRAINED_URL_ENV} "
                        "overrides the address (a mirror, or file:///path/to/ssd300_vgg16.tar.gz)")
    w.add_argument("--sha256", help="expected SHA-256 of the tarball (default: the .sha256 published beside it); "
                                    f"downloads and extractions above ${MAX_WEIGHTS_MB_ENV} MB are refused")
    m = p.add_argument_group("what to run on")
    one = m.add_mutually_exclusive_group()
    one.add_argument("--images", nargs="+", help="image files, folders and glob patterns "
                                                 "(default: the sample dataset's val images)")
    one.add_argument("--video", nargs="+", metavar="FILE",
                     help="video files: writes <name>.mp4 (boxes drawn; same size, frame rate and timing) and "
                          "<name>.jsonl (one line of detections per frame); Ctrl-C keeps what was done")
    one.add_argument("--camera", type=cli.nonnegative_int, metavar="N",
                     help="the local camera /dev/videoN (V4L2) until Ctrl-C or SIGTERM: camera<N>.mp4 and .jsonl; "
                          "frames arriving while the detector is busy are skipped")
    one.add_argument("--eval", "--coco-eval", dest="eval", action="store_true",
                     help="evaluate on a split of --data-path instead: the COCO AP table, or Pascal VOC's per-class "
                          "AP and mAP (--coco-eval: the same, its former name)")
    m.add_argument("--data-path", help="--eval: a COCO-format dataset root, a Pascal VOC layout, a YOLO dataset "
                                       "(data.yaml) or a dataset YAML (as train.sh's --data-path; default: the "
                                       "sample dataset)")
    m.add_argument("--val-split", help="--eval: the split (COCO, YOLO, dataset YAML: default val; VOC: "
                                       "[YEAR-]SET[,...], default 2007-test if VOC2007 has a test set, else val)")
    m.add_argument("--voc-metric", choices=["2007", "2010"],
                   help="--eval on VOC: mAP by the VOC2007 11-point AP (default) or the VOC2010+ area")
    m.add_argument("--max-images", type=cli.positive_int, help="--eval: only the first N images of the split")
    o = p.add_argument_group("output")
    o.add_argument("--score-threshold", type=cli.fraction, default=0.3,
                   help="detections below this score are not reported (0-1, default 0.3; --eval keeps the "
                        "model's 0.01, as AP needs the low-score tail)")
    o.add_argument("--output-dir", default=INFER_OUTPUT, help=f"default {INFER_OUTPUT}")
    o.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    o.add_argument("--backend", choices=["oneflow", "onnxruntime", "openvino"],
                   help="run the network with OneFlow, or export it to ONNX once (cached per weights in "
                        "$FLOWVISION_CACHE/onnx) and run it with ONNX Runtime (same detections, tested; faster on "
                        "CPU, see docs/performance.md) or OpenVINO (CPU; needs pip install openvino). Default: "
                        "onnxruntime on the CPU, oneflow on a GPU, openvino for --precision bfloat16")
    o.add_argument("--precision", choices=["float32", "bfloat16", "int8"], default="float32",
                   help="int8: ONNX Runtime or OpenVINO runs the network quantized to 8 bits (weights per channel, "
                        "activations calibrated on --calibration-data; quantized once per weights and calibration "
                        "images, cached beside the export), faster than float32 on CPU (docs/performance.md). "
                        "bfloat16: OpenVINO on a CPU with BF16 instructions (AVX-512 BF16, AMX; float32 elsewhere, "
                        "saying so). Post-processing stays float32 (default float32)")
    o.add_argument("--calibration-data", metavar="DIR",
                   help="--precision int8: images of the model's training data to calibrate the activation ranges "
                        "on: a COCO-format dataset root (its train2017/) or a folder of images (default: the "
                        "sample dataset)")
    o.add_argument("--calibration-images", type=cli.positive_int, default=16, metavar="N",
                   help="--precision int8: how many images of --calibration-data, spread over it (default 16)")
    o.add_argument("--batch-size", type=cli.positive_int, default=4,
                   help="images or video frames per forward pass (default 4)")
    o.add_argument("--workers", type=cli.nonnegative_int, default=2,
                   help="--eval: data loading processes (default 2)")
    return p


def weights_source(args):
    """``(source, description)``: what to load, and a sentence for the user. ValueError with advice when there is
    nothing to load."""
    if args.weights and args.pretrained:
        raise ValueError("give --weights or --pretrained, not both")
    if args.pretrained:
        url = weights_url("coco")
        return url, f"the published COCO weights ({url})"
    if args.weights:
        return check_source(args.weights, "--weights"), args.weights
    latest = ckpt.latest_checkpoint(OUTPUT_DIR)
    if latest is None:
        raise ValueError(f"no weights given and no checkpoint of train.sh in {OUTPUT_DIR}. Train one "
                         "(cd cv/detection && bash ssd300_vgg16/train.sh), or pass --weights PATH_OR_URL, or "
                         "--pretrained for the published COCO weights.")
    return latest, f"the newest checkpoint of train.sh ({latest})"


def collect_images(patterns):
    """Image paths from files, folders (their images, sorted) and glob patterns, in the order given."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(os.path.join(pattern, f) for f in os.listdir(pattern)
                           if f.lower().endswith(IMAGE_EXTENSIONS))
        elif any(c in pattern for c in "*?["):
            found = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        elif os.path.isfile(pattern):
            found = [pattern]
        else:
            raise ValueError(f"--images {pattern}: no such file or directory")
        if not found:
            raise ValueError(f"--images {pattern}: no images there")
        paths += [p for p in found if p not in paths]
    return paths


def output_names(paths):
    """A distinct output stem per input path (``a.jpg`` and ``b/a.jpg`` become ``a`` and ``a_1``)."""
    used, names = set(), []
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        name, k = stem, 0
        while name in used:
            k += 1
            name = f"{stem}_{k}"
        used.add(name)
        names.append(name)
    return names


def run_on_images(detector, paths, args):
    """Detect with ``detector`` (a :class:`Detector`), write ``<name>.json`` and ``<name>.jpg`` per image, print a
    line each; returns the JSON records. An unreadable image is skipped with a message naming it (the others still
    run) and counted. Images are decoded ahead (:meth:`Detector.stream`), and drawn and written behind the network
    in one thread (:class:`pipeline.Behind`); the lines, files and records come in the order they would in line."""
    results, skipped = [], []
    outputs = dict(zip(paths, output_names(paths)))

    def skip(path, error):
        skipped.append(path)
        print(f"{path}: skipped, cannot be read: {error}", flush=True)

    def save(found):
        record = found.to_json()
        stem = os.path.join(args.output_dir, outputs[found.path])
        fileio.write_json(stem + ".json", record, indent=1)
        with fileio.atomic_path(stem + ".jpg") as tmp:
            found.draw().save(tmp, format="JPEG", quality=92)
        print(f"{found.path}: {found}", flush=True)
        results.append(record)

    with pipeline.Behind(depth=args.batch_size, name="write images") as behind:
        found = detector.stream(paths, args.batch_size, skip=lambda path, error: behind.submit(skip, path, error))
        with contextlib.closing(found):  # its read-ahead thread stops here, even on an error
            for one in found:
                behind.submit(save, one)
    if skipped:
        print(f"{len(skipped)} of {len(paths)} images could not be read and were skipped", flush=True)
    return results


def check_videos(args):
    """``[(path, output stem)]`` for ``--video`` (``[(None, "camera<N>")]`` for ``--camera``), each input opened and
    its first frame decoded now, so that a bad one is an error naming it before the model loads."""
    if args.camera is not None:
        with video.VideoSource.camera(args.camera):
            return [(None, f"camera{args.camera}")]
    stems = output_names(args.video)
    for path, stem in zip(args.video, stems):
        with video.VideoSource.open(path):
            pass
        out = os.path.join(args.output_dir, stem + ".mp4")
        if os.path.exists(out) and os.path.samefile(out, path):
            raise ValueError(f"--video {path}: its output would replace it; choose another --output-dir")
    return list(zip(args.video, stems))


def frame_functions(detector, batch_size):
    """``(detect, to_records)`` for :func:`cv.detection.deploy.video.process_video`: frames go through
    :meth:`Detector.predict` as RGB arrays, so they get the detections the same pictures get as images."""
    def detect(frames):
        return detector.predict(list(frames), batch_size)

    return detect, Detections.records


def run_on_videos(detector, inputs, args):
    """``--video``/``--camera``: per input ``<stem>.mp4`` (the frames with their boxes drawn) and ``<stem>.jsonl``
    (the detections of each frame, as for images), one summary line each. Ctrl-C or SIGTERM ends the input in
    progress with complete outputs; for videos the rest are not started (:class:`cli.Interrupted`), for a camera,
    which has no other end, that is the normal end."""
    detect, to_records = frame_functions(detector, args.batch_size)
    results, start = [], time.perf_counter()
    with cli.StopRequest("finishing the frames in progress, then closing the outputs") as stop:
        for i, (path, stem) in enumerate(inputs):
            source = video.VideoSource.camera(args.camera) if path is None else video.VideoSource.open(path)
            with source:
                result = video.process_video(
                    source, detect, to_records, draw_detections, os.path.join(args.output_dir, stem + ".mp4"),
                    os.path.join(args.output_dir, stem + ".jsonl"), args.batch_size,
                    fields={"score_threshold": args.score_threshold}, stop=stop)
            print(result, flush=True)
            results.append(result)
            if stop() and path is not None:
                rest = [p for p, _ in inputs[i + 1:]]
                raise cli.Interrupted(stop.signum, f"by {stop.name}; {path}: its outputs hold the {result.frames} "
                                                   "frames processed" + (f"; not started: {', '.join(rest)}"
                                                                         if rest else ""))
    early = sum(r.stop_reason is not None for r in results)
    frames = sum(r.frames for r in results)
    print(f"{frames} frames of {len(results)} video{'s' * (len(results) != 1)} in {time.perf_counter() - start:.1f} s"
          + (f" ({early} ended early, see above)" if early and path is not None else "")
          + f"; annotated videos and detections in {os.path.abspath(args.output_dir)}", flush=True)
    return results


def evaluate_split(detector, names, meta, args, device):
    """``--eval``: the evaluation table of a split of ``--data-path`` (COCO, Pascal VOC or YOLO: the dataset brings
    its evaluator); its numbers are returned, the detections written to ``detections_val.json``."""
    data_path = args.data_path or SAMPLE_DATA
    layout = datasets.detect_layout(data_path)  # COCO, Pascal VOC, YOLO or a dataset YAML; a missing path is named
    split = args.val_split or datasets.default_val_split(layout)
    print(f"{layout.description}; evaluating on {split}", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropped-box counts are the training program's concern
        # Weights without metadata and a 91-way head: COCO's published ones, in COCO's label space.
        labels = "coco" if layout.format == "coco" and len(names) == COCO_NUM_CLASSES and not meta else "auto"
        val_set = datasets.open_split(layout, split, False, max_images=args.max_images, labels=labels,
                                      voc_metric=args.voc_metric)
    trained_on = {int(k): v for k, v in meta["label_to_category_id"].items()} if meta else None
    if val_set.num_classes != len(names) or (trained_on and trained_on != val_set.label_to_category_id) or (
            meta and meta.get("label_names") not in (None, val_set.label_names)):
        raise ValueError(f"the model's {len(names) - 1} classes do not match the {val_set.num_classes - 1} "
                         f"categories of {val_set.annotation_file}")
    print(f"evaluating on {len(val_set)} images of {val_set.annotation_file}", flush=True)
    return evaluate(detector, make_loader(val_set, args.batch_size, args.workers, shuffle=False),
                    val_set.evaluator(), device, os.path.join(args.output_dir, "detections_val.json"))


def main(args):
    device = flow.device(args.device or ("cuda" if flow.cuda.is_available() else "cpu"))
    args.backend = choose_backend(args.backend, args.precision, device, prefix="--")
    if args.precision != "int8" and args.calibration_data:
        raise ValueError("--calibration-data is for --precision int8")
    cli.writable_dir(args.output_dir, "--output-dir")
    source, description = weights_source(args)
    videos = check_videos(args) if args.video or args.camera is not None else None
    model, names, meta = load_model(source, args.sha256, device)
    detector = model
    if args.backend != "oneflow":
        detector = exported_detector(model, args.backend, args.precision, args.calibration_data,
                                     args.calibration_images)
    precision = getattr(detector, "precision", "float32")  # OpenVINO runs float32 for bfloat16 on a CPU without it
    shown = "" if precision == "float32" else f" ({precision})"
    print(f"weights: {description}; {len(names) - 1} classes; backend {args.backend}{shown}, device {device}",
          flush=True)

    if args.eval:
        return evaluate_split(detector, names, meta, args, device)
    detector = Detector(detector, names, args.score_threshold, device, args.backend, precision)
    if videos is not None:
        return run_on_videos(detector, videos, args)
    if args.images is None:
        if not os.path.isdir(os.path.join(SAMPLE_DATA, "val2017")):
            from cv.detection.data.sample import make_sample_dataset

            make_sample_dataset(SAMPLE_DATA)
        args.images = [os.path.join(SAMPLE_DATA, "val2017")]
        print(f"images: the sample dataset's val images ({args.images[0]})", flush=True)
    paths = collect_images(args.images)
    start = time.perf_counter()
    results = run_on_images(detector, paths, args)
    print(f"{len(results)} images in {time.perf_counter() - start:.1f} s; detections and pictures in "
          f"{os.path.abspath(args.output_dir)}", flush=True)
    return results


if __name__ == "__main__":
    cli.run(main, get_args_parser())
