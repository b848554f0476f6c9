"""Publish a training checkpoint as the model zoo's artefacts (see :mod:`cv.detection.ssd300_vgg16.publish`).

    .venv/bin/python scripts/publish.py CHECKPOINT --output-dir DIR [--name ssd300_vgg16]

CHECKPOINT is a checkpoint directory written by train.py (e.g. output/ssd300_vgg16/checkpoint_epoch0119) or a
bare state-dict directory. Writes DIR/NAME.tar.gz (weights only, reproducible), NAME.tar.gz.sha256 and the
model card NAME.json / NAME.md, then prints where they are. Works from any directory. DIR serves one complete
set at all times: killed, stopped by SIGTERM or Ctrl-C, or out of space, it serves the set it served before, or
the complete new one, and the last line says which.
"""
import argparse
import os
import signal
import time

from cv.detection.utils import cli, fileset
from cv.detection.ssd300_vgg16.publish import ARCH, publish


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint directory (train.py's) or bare state-dict directory")
    parser.add_argument("-o", "--output-dir", required=True, help="where to write the artefacts (created)")
    parser.add_argument("--name", default=ARCH, help=f"artefact and top-level directory name (default {ARCH})")
    return parser


def _abandon(signum, frame):
    raise cli.Interrupted(signum, f"{signal.Signals(signum).name} received")


def _served_file(path):
    """The identity of the file ``path`` leads to (device, inode), or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def main(args):
    start = time.perf_counter()
    cli.writable_dir(args.output_dir, "--output-dir")
    tarball = os.path.join(args.output_dir, f"{args.name}.tar.gz")
    before = _served_file(tarball)
    for signum in (signal.SIGTERM, signal.SIGINT):  # an exception, so that the folder's state is reported
        signal.signal(signum, _abandon)
    try:
        card = publish(args.checkpoint, args.output_dir, name=args.name)
    except cli.Interrupted as e:
        if e.__cause__ is None:  # stopped outside the set's switching (else the message already says the state)
            served = fileset.current(args.output_dir, args.name)
            state = ("unchanged" if _served_file(tarball) == before
                     else f"serves {fileset.describe(served, served)}")
            raise cli.Interrupted(e.signum, f"{e}; {args.output_dir} {state}") from None
        raise
    paths, art, ev = card["paths"], card["artifact"], card["evaluation"]
    print(f"published {os.path.abspath(args.checkpoint)} in {time.perf_counter() - start:.1f} s:")
    print(f"  weights  {os.path.abspath(paths['tarball'])} ({art['bytes']:,} bytes, {card['parameters']:,} "
          f"parameters, {card['num_classes']} classes including background)")
    print(f"  sha256   {os.path.abspath(paths['sha256'])} ({art['sha256']})")
    print(f"  card     {os.path.abspath(paths['card_md'])}, {os.path.abspath(paths['card_json'])}")
    print(f"  eval     {ev['headline']['name']} {ev['headline']['value']} on {ev['dataset']}"
          f"{' ' + ev['split'] if ev.get('split') else ''} (epoch {ev['epoch']})" if ev else
          "  eval     unknown (the checkpoint records no evaluation)")
    if card["unknown"]:
        print(f"  unknown  {', '.join(card['unknown'])}")


if __name__ == "__main__":
    cli.run(main, get_args_parser())
