"""Export SSD300-VGG16 to ONNX.

    .venv/bin/python scripts/export_onnx.py --weights SRC --output ssd300_vgg16.onnx [--network-only [--batch-size 1]]

SRC is anything ``infer.sh --weights`` takes (a checkpoint, a zoo tarball path or URL, an extracted zoo directory);
``--pretrained`` uses the published COCO weights.

By default (``--end-to-end``) the file is the whole detector and needs nothing of this project to run: input
``images``, uint8 ``[N, 3, H, W]`` RGB of any batch and size (one size per run); outputs ``boxes`` ``[N, 200, 4]``
(x1, y1, x2, y2 in input pixels), ``scores`` ``[N, 200]``, ``labels`` ``[N, 200]`` and ``num_detections`` ``[N]``
(rows past the count are padding, label 0). Resizing, normalisation, box decoding, NMS and the top 200 are in the
graph; the class names and the source weights with their SHA-256 are in its metadata. The full contract is in
``cv/detection/deploy/onnx_end_to_end.py``. With ONNX Runtime:

    boxes, scores, labels, count = session.run(None, {"images": np.asarray(img)[None].transpose(0, 3, 1, 2)})

``--network-only`` writes the network alone, as ``infer.sh --backend onnxruntime`` uses it: the resized,
normalised batch (``[N, 3, 300, 300]``, ``N`` fixed by ``--batch-size``: see ``SSD.preprocess``) in,
``cls_logits [N, 8732, C]`` and ``bbox_regression [N, 8732, 4]`` out, with a JSON file beside it recording the batch
size and feature-map sizes that the post-processing (``SSD.detect``) needs.
"""
import argparse
import os

from cv.detection.utils import cli


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="checkpoint, zoo tarball (path or URL) or extracted zoo directory")
    src.add_argument("--pretrained", action="store_true", help="the published COCO weights")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--end-to-end", action="store_true",
                      help="the whole detector, uint8 images in, detections out (the default)")
    what.add_argument("--network-only", action="store_true",
                      help="the network alone, as infer.sh --backend onnxruntime runs it")
    p.add_argument("--batch-size", type=cli.positive_int,
                   help="--network-only: images per run of the exported network (default 1)")
    return p


def main(args):
    from cv.detection.deploy.onnx_end_to_end import check_output_path

    if args.batch_size is not None and not args.network_only:
        raise ValueError("--batch-size is for --network-only; the end-to-end model takes any batch size")
    check_output_path(args.output)  # before the minute of loading and converting
    from cv.detection.ssd300_vgg16.detector import load_model
    from cv.detection.ssd300_vgg16.weights import weights_url

    source = weights_url("coco") if args.pretrained else args.weights
    model, names, _ = load_model(source)
    if args.network_only:
        from cv.detection.deploy.onnx_backend import export

        path = export(model, args.output, args.batch_size or 1)
        print(f"wrote {path} ({os.path.getsize(path) / 2 ** 20:.0f} MB) and {path}.json")
        return
    from cv.detection.deploy.onnx_end_to_end import export_end_to_end

    path = export_end_to_end(model, args.output, names, source)
    print(f"wrote {path} ({os.path.getsize(path) / 2 ** 20:.0f} MB): uint8 images [N, 3, H, W] in, boxes, scores, "
          f"labels and num_detections out; {len(names) - 1} classes")


if __name__ == "__main__":
    cli.run(main, get_args_parser())
