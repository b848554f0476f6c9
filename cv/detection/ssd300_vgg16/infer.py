"""Run SSD300-VGG16 on images, or evaluate it on a COCO-format val split.

    cd cv/detection && bash ssd300_vgg16/infer.sh [--images PATH ...] [--weights SRC | --pretrained] [flags]

Images: for each image, the detections as JSON (boxes in pixels, score, label id and name, image size) and a copy
with the boxes drawn, plus one summary line on the console. ``--coco-eval`` instead prints the COCO AP table of a
val split. With no arguments: the sample dataset's val images and the newest checkpoint ``train.sh`` wrote.
"""
import argparse
import glob
import os
import time
import warnings

import oneflow as flow
from PIL import Image, ImageDraw

from cv.detection import checkpoint as ckpt
from cv.detection import cli, fileio, hub
from cv.detection.coco import COCO_LABEL_NAMES, COCO_NUM_CLASSES, CocoDetection, load_rgb, make_loader
from cv.detection.coco_eval import CocoEvaluator
from cv.detection.engine import evaluate
from cv.detection.ssd300_vgg16 import OUTPUT_DIR, SAMPLE_DATA
from cv.detection.ssd300_vgg16.model import (MAX_WEIGHTS_MB_ENV, PRETRAINED_URL_ENV, from_state_dict,
                                             load_source, weights_url)
from cv.detection.transforms import to_chw_float

EXIF_ORIENTATION = 0x0112
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
    m.add_argument("--images", nargs="+", help="image files, folders and glob patterns "
                                               "(default: the sample dataset's val images)")
    m.add_argument("--coco-eval", action="store_true", help="evaluate on the val split of --data-path instead")
    m.add_argument("--data-path", help="COCO-format dataset root for --coco-eval (default: the sample dataset)")
    m.add_argument("--max-images", type=cli.positive_int, help="--coco-eval: only the first N val images")
    o = p.add_argument_group("output")
    o.add_argument("--score-threshold", type=cli.fraction, default=0.3,
                   help="detections below this score are not reported (0-1, default 0.3; --coco-eval keeps the "
                        "model's 0.01, as COCO's AP needs the low-score tail)")
    o.add_argument("--output-dir", default=INFER_OUTPUT, help=f"default {INFER_OUTPUT}")
    o.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    o.add_argument("--backend", choices=["oneflow", "onnxruntime"], default="oneflow",
                   help="run the network with OneFlow, or export it to ONNX once (cached per weights in "
                        "$FLOWVISION_CACHE/onnx) and run it with ONNX Runtime: several times faster on CPU "
                        "(default oneflow)")
    o.add_argument("--batch-size", type=cli.positive_int, default=4, help="images per forward pass (default 4)")
    o.add_argument("--workers", type=cli.nonnegative_int, default=2,
                   help="--coco-eval: data loading processes (default 2)")
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
        if not hub.is_url(args.weights) and not os.path.exists(args.weights):
            raise ValueError(f"--weights {args.weights}: no such file or directory"
                             + (" (URLs must be http://, https:// or file://)" if "://" in args.weights else ""))
        return args.weights, args.weights
    latest = ckpt.latest_checkpoint(OUTPUT_DIR)
    if latest is None:
        raise ValueError(f"no weights given and no checkpoint of train.sh in {OUTPUT_DIR}. Train one "
                         "(cd cv/detection && bash ssd300_vgg16/train.sh), or pass --weights PATH_OR_URL, or "
                         "--pretrained for the published COCO weights.")
    return latest, f"the newest checkpoint of train.sh ({latest})"


def label_names(num_classes, meta):
    """Names by label: the training run's (a checkpoint of ours, or a published tarball's ``meta.json``), else
    COCO's for a 91-way model, else ``class N``. COCO's ten unused ids (``N/A`` in COCO's list) are named
    ``N/A (COCO id N)``: a detection of one is not mistaken for a class."""
    if meta and meta.get("label_names") and len(meta["label_names"]) == num_classes:
        names = meta["label_names"]
    elif num_classes == COCO_NUM_CLASSES:
        names = COCO_LABEL_NAMES
    else:
        names = ["__background__"] + [f"class {i}" for i in range(1, num_classes)]
    return [f"N/A (COCO id {i})" if name == "N/A" else str(name) for i, name in enumerate(names)]


def load_model(source, sha256=None, device="cpu"):
    """``(model in eval mode, label_names, meta)`` from a checkpoint directory, a zoo directory, or a tarball
    path/URL, read without running code from it. ``meta`` is the training metadata (None when unknown)."""
    payload, meta = load_source(source, sha256=sha256)
    model = from_state_dict(ckpt.model_state(payload), source)
    return model.to(device).eval(), label_names(model.num_classes, meta), meta


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


def read_as_seen(path):
    """``(RGB image as a viewer shows it, its EXIF orientation)``. Phone photos store their pixels sideways with
    an EXIF orientation (1: as stored, 6: turn right, ...); users see, and expect boxes on, the turned image."""
    try:
        with Image.open(path) as img:
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        orientation = 1  # load_rgb says what is wrong with the file
    return load_rgb(path, exif_transpose=True), orientation if orientation in range(1, 9) else 1


def colour(label):
    """A stable, distinct colour per label (golden-angle hue steps)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image, detections):
    image = image.copy()
    draw = ImageDraw.Draw(image)
    for d in detections:
        x1, y1, x2, y2 = d["box"]
        c = colour(d["label"])
        draw.rectangle([x1, y1, x2, y2], outline=c, width=max(2, round(min(image.size) / 200)))
        text = f"{d['name']} {d['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        ty = y1 - (bottom - top) - 4 if y1 - (bottom - top) - 4 >= 0 else y1
        draw.rectangle([x1, ty, x1 + right - left + 4, ty + bottom - top + 4], fill=c)
        draw.text((x1 + 2, ty + 1), text, fill=(0, 0, 0))
    return image


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


def as_records(output, names, score_threshold):
    """One image's detections above ``score_threshold`` as JSON-able dicts (box, score, label, name)."""
    keep = output["scores"] >= score_threshold
    return [{"box": [round(float(v), 2) for v in box], "score": round(float(s), 4), "label": int(label),
             "name": names[int(label)] if int(label) < len(names) else f"class {int(label)}"}
            for box, s, label in zip(output["boxes"][keep].numpy(), output["scores"][keep].numpy(),
                                     output["labels"][keep].numpy())]


@flow.no_grad()
def run_on_images(detector, names, paths, args, device):
    """Detect, write ``<name>.json`` and ``<name>.jpg`` per image, print a line each; returns the results.
    An unreadable image is skipped with a message naming it (the others still run) and counted."""
    results, skipped = [], 0
    stems = output_names(paths)
    for start in range(0, len(paths), args.batch_size):
        batch = []
        for path, stem in zip(paths[start:start + args.batch_size], stems[start:start + args.batch_size]):
            try:
                batch.append((path, stem, *read_as_seen(path)))
            except OSError as e:
                skipped += 1
                print(f"{path}: skipped, cannot be read: {e}", flush=True)
        if not batch:
            continue
        outputs = detector([flow.tensor(to_chw_float(img), device=device) for _, _, img, _ in batch])
        for (path, stem, img, orientation), out in zip(batch, outputs):
            dets = as_records(out, names, args.score_threshold)
            record = {"image": os.path.abspath(path), "width": img.size[0], "height": img.size[1],
                      "exif_orientation": orientation, "score_threshold": args.score_threshold, "detections": dets}
            if orientation != 1:
                record["note"] = ("boxes are in the orientation the image is viewed in (its EXIF orientation "
                                  f"{orientation} applied); width and height too")
            fileio.write_json(os.path.join(args.output_dir, stem + ".json"), record, indent=1)
            with fileio.atomic_path(os.path.join(args.output_dir, stem + ".jpg")) as tmp:
                draw_detections(img, dets).save(tmp, format="JPEG", quality=92)
            summary = ", ".join(f"{d['name']} {d['score']:.2f}" for d in dets[:5]) + (" ..." if len(dets) > 5 else "")
            print(f"{path}: {len(dets)} detection{'s' * (len(dets) != 1)}" + (f" ({summary})" if dets else ""),
                  flush=True)
            results.append(record)
    if skipped:
        print(f"{skipped} of {len(paths)} images could not be read and were skipped", flush=True)
    return results


def coco_eval(detector, names, meta, args, device):
    data_path = args.data_path or SAMPLE_DATA
    if not os.path.isdir(data_path):
        raise ValueError(f"--data-path {data_path}: no such directory")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropped-box counts are the training program's concern
        labels = "coco" if len(names) == COCO_NUM_CLASSES and not meta else "auto"
        val_set = CocoDetection(data_path, "val", train=False, labels=labels, max_images=args.max_images)
    trained_on = {int(k): v for k, v in meta["label_to_category_id"].items()} if meta else None
    if val_set.num_classes != len(names) or (trained_on and trained_on != val_set.label_to_category_id):
        raise ValueError(f"the model's {len(names) - 1} classes do not match the {val_set.num_classes - 1} "
                         f"categories of {val_set.annotation_file}")
    print(f"evaluating on {len(val_set)} images of {val_set.annotation_file}", flush=True)
    return evaluate(detector, make_loader(val_set, args.batch_size, args.workers, shuffle=False),
                    CocoEvaluator(val_set.dataset, val_set.label_to_category_id), device,
                    os.path.join(args.output_dir, "detections_val.json"))


def main(args):
    device = flow.device(args.device or ("cuda" if flow.cuda.is_available() else "cpu"))
    if args.backend == "onnxruntime" and device.type != "cpu":
        raise ValueError("--backend onnxruntime runs on the CPU; drop --device or use --backend oneflow")
    cli.writable_dir(args.output_dir, "--output-dir")
    source, description = weights_source(args)
    model, names, meta = load_model(source, args.sha256, device)
    detector = model
    if args.backend == "onnxruntime":
        from cv.detection.onnx_backend import OnnxRuntimeSSD, cached_export

        detector = OnnxRuntimeSSD(model, cached_export(model, os.path.join(hub.cache_dir(), "onnx")))
    print(f"weights: {description}; {len(names) - 1} classes; backend {args.backend}, device {device}", flush=True)

    if args.coco_eval:
        return coco_eval(detector, names, meta, args, device)
    if args.images is None:
        if not os.path.isdir(os.path.join(SAMPLE_DATA, "val2017")):
            from cv.detection.sample_dataset import make_sample_dataset

            make_sample_dataset(SAMPLE_DATA)
        args.images = [os.path.join(SAMPLE_DATA, "val2017")]
        print(f"images: the sample dataset's val images ({args.images[0]})", flush=True)
    paths = collect_images(args.images)
    start = time.perf_counter()
    results = run_on_images(detector, names, paths, args, device)
    print(f"{len(results)} images in {time.perf_counter() - start:.1f} s; detections and pictures in "
          f"{os.path.abspath(args.output_dir)}", flush=True)
    return results


if __name__ == "__main__":
    cli.run(main, get_args_parser())
