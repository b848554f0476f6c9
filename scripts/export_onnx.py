"""Export SSD300-VGG16's network (VGG16 trunk and heads) to ONNX.

    .venv/bin/python scripts/export_onnx.py --weights SRC --output ssd300_vgg16.onnx [--batch-size 1]

SRC is anything ``infer.sh --weights`` takes (a checkpoint, a zoo tarball path or URL, an extracted zoo directory);
``--pretrained`` uses the published COCO weights. The ONNX model takes the resized, normalised batch
(``[N, 3, 300, 300]``: see ``SSD.preprocess``) and returns ``cls_logits [N, 8732, C]`` and
``bbox_regression [N, 8732, 4]``; a JSON file beside it records the batch size and feature-map sizes that the
post-processing (``SSD.detect``) needs. ``infer.sh --backend onnxruntime`` does this export by itself.
"""
import argparse
import os


from cv.detection.ssd300_vgg16.infer import load_model
from cv.detection.ssd300_vgg16.weights import weights_url
from cv.detection.deploy.onnx_backend import export


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="checkpoint, zoo tarball (path or URL) or extracted zoo directory")
    src.add_argument("--pretrained", action="store_true", help="the published COCO weights")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--batch-size", type=int, default=1, help="images per run of the exported network (default 1)")
    args = p.parse_args()
    source = weights_url("coco") if args.pretrained else args.weights
    model, _, _ = load_model(source)
    path = export(model, args.output, args.batch_size)
    print(f"wrote {path} ({os.path.getsize(path) / 2 ** 20:.0f} MB) and {path}.json")


if __name__ == "__main__":
    main()
