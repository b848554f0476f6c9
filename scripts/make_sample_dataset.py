"""Write the deterministic synthetic COCO-format sample dataset (see :mod:`cv.detection.sample_dataset`).

    .venv/bin/python scripts/make_sample_dataset.py --output DIR [--seed N] [--num-train N] [--num-val N]

Prints the summary (JSON) and the time taken. Works from any directory.
"""
import argparse
import json
import os
import sys
import time

# Make `cv` importable when the script is run by path from anywhere (it lives in <repo>/scripts/).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cv.detection.sample_dataset import DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL, make_sample_dataset  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="dataset root (train2017/, val2017/, annotations/)")
    parser.add_argument("--seed", type=int, default=0, help="determines every byte written (default 0)")
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN, help="train images")
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL, help="val images")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        summary = make_sample_dataset(args.output, seed=args.seed, num_train=args.num_train, num_val=args.num_val)
    except ValueError as e:
        parser.error(str(e))
    elapsed = time.perf_counter() - start
    print(json.dumps(summary, indent=2))
    print(f"wrote {sum(s['images'] for s in summary['splits'].values())} images in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
