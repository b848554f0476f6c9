"""Write the deterministic synthetic COCO-format sample dataset (see :mod:`cv.detection.data.sample`).

    .venv/bin/python scripts/make_sample_dataset.py --output DIR [--seed N] [--num-train N] [--num-val N]
                                                    [--coco-categories | --format voc [--num-test N] | --format yolo]

``--coco-categories`` writes the COCO-faithful variant: COCO's real category ids and names (so COCO's 91-way
label space is used), crowd regions, empty, grayscale and PNG images, very wide and tall images, crowded scenes.
``--format voc`` writes the same pictures as the plain sample in Pascal VOC's layout (DIR/VOCdevkit/VOC2007:
Annotations/*.xml, ImageSets/Main/{train,val,trainval,test}.txt, JPEGImages/), the shapes named by VOC classes,
small objects marked difficult. ``--format yolo`` writes the plain sample converted to YOLO's layout (DIR/data.yaml,
DIR/images/{train,val}/, DIR/labels/{train,val}/*.txt): the same images and boxes. Prints the summary (JSON) and
the time taken. Works from any directory.
"""
import argparse
import json
import time


from cv.detection.data.sample import (DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL, make_sample_dataset,
                                      make_voc_sample_dataset, make_yolo_sample_dataset)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="dataset root (train2017/, val2017/, annotations/; with "
                                                        "--format voc: VOCdevkit/VOC2007/; --format yolo: data.yaml, "
                                                        "images/, labels/)")
    parser.add_argument("--format", choices=["coco", "voc", "yolo"], default="coco",
                        help="coco: the COCO 2017 layout (default); voc: Pascal VOC's layout; yolo: YOLO's (a "
                             "data.yaml with the class names, images/ and labels/)")
    parser.add_argument("--seed", type=int, default=0, help="determines every byte written (default 0)")
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN, help="train images")
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL, help="val images")
    parser.add_argument("--num-test", type=int, default=DEFAULT_NUM_VAL, help="--format voc: test images")
    parser.add_argument("--coco-categories", action="store_true",
                        help="the COCO-faithful variant: shapes labeled with COCO's own category ids and names "
                             "(COCO's 91-way labels), with crowd regions (RLE), empty, grayscale and PNG images, "
                             "extreme aspect ratios and images with 30-60 objects")
    args = parser.parse_args(argv)
    if args.format != "coco" and args.coco_categories:
        parser.error(f"--coco-categories is a variant of the COCO format, not of --format {args.format}")

    start = time.perf_counter()
    try:
        if args.format == "voc":
            summary = make_voc_sample_dataset(args.output, seed=args.seed, num_train=args.num_train,
                                              num_val=args.num_val, num_test=args.num_test)
        elif args.format == "yolo":
            summary = make_yolo_sample_dataset(args.output, seed=args.seed, num_train=args.num_train,
                                               num_val=args.num_val)
        else:
            summary = make_sample_dataset(args.output, seed=args.seed, num_train=args.num_train,
                                          num_val=args.num_val, coco_categories=args.coco_categories)
    except ValueError as e:
        parser.error(str(e))
    elapsed = time.perf_counter() - start
    print(json.dumps(summary, indent=2))
    print(f"wrote {sum(s['images'] for s in summary['splits'].values())} images in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
