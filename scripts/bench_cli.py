"""``benchmark.py --sections cli``: ``infer.sh --images`` as a user runs it, seconds per extra image, for each backend
and precision, beside torchvision's ``ssd300_vgg16`` on PyTorch.

The subject is the int8 section's fitted SSD300-VGG16 (``bench_int8.fitted_model``), saved as a weights file, on
its sample images. Each contender runs as a fresh command twice, on 2 images and on 2 + --cli-extra-images; the
difference over the extra images is the cost of one more image, whatever the command's one-off costs (starting
Python, importing OneFlow, reading the weights, loading the network). That cost is all of infer.sh's per-image work:
decoding, the network, post-processing, drawing, writing the JSON and the JPEG, the console line. The contenders
alternate, each measured --repeats times (median, with the spread), after one warm-up run each that also makes the
cached exports (the int8 network calibrated as ``--calibration-data`` does on the training split: 16 of its images,
spread over it).

torchvision (with --torchvision-python, or when this Python has it): a worker process with the same weights decodes
and detects the same files (no drawing or writing), timed the same way, 2 images against the 2 + extra.
"""
import os
import shutil
import subprocess
import tempfile
import time

import oneflow as flow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFER_SH = os.path.join(ROOT, "cv", "detection", "ssd300_vgg16", "infer.sh")
CONTENDERS = [("onnxruntime", "float32"), ("openvino", "float32"), ("openvino", "bfloat16"), ("onnxruntime", "int8"),
              ("openvino", "int8")]
BASE_IMAGES = 2


def _folder(path, files):
    os.makedirs(path)
    for f in files:
        os.symlink(f, os.path.join(path, os.path.basename(f)))
    return path


class InferCommand:
    """``infer.sh`` with one backend and precision on the fitted model's weights, timed as a whole command."""

    def __init__(self, backend, precision, weights, calibration, work):
        self.args = ["bash", INFER_SH, "--weights", weights, "--backend", backend, "--precision", precision]
        if precision == "int8":
            self.args += ["--calibration-data", calibration]
        self.work = work
        self.env = {**os.environ, "FLOWVISION_CACHE": os.path.join(work, "cache")}

    def __call__(self, folder):
        out = tempfile.mkdtemp(dir=self.work)
        start = time.perf_counter()
        subprocess.run(self.args + ["--images", folder, "--output-dir", out], check=True, env=self.env,
                       stdout=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        shutil.rmtree(out)
        return elapsed


def bench_cli(args):
    from bench_int8 import TorchvisionWorker, fitted_model, torchvision_python
    from benchmark import summarize

    result = {"extra_images": args.cli_extra_images}
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as work:
        model, dataset, _ = fitted_model(args, work, result)
        paths = [record.path for record in dataset.images]
        total = BASE_IMAGES + args.cli_extra_images
        if len(paths) < total:
            raise SystemExit(f"--cli-extra-images {args.cli_extra_images}: the fitted model has {len(paths)} images, "
                             f"at most {len(paths) - BASE_IMAGES} extra")
        weights = os.path.join(work, "weights")
        flow.save(model.state_dict(), weights)
        folders = {"base": _folder(os.path.join(work, "base"), paths[:BASE_IMAGES]),
                   "more": _folder(os.path.join(work, "more"), paths[:total])}
        calibration = os.path.dirname(paths[0])  # the training split: 16 others are picked, spread over it
        contenders = {f"{b} {p}": InferCommand(b, p, weights, calibration, work) for b, p in CONTENDERS}
        python = torchvision_python(args)
        if python:
            workers = {}
            for k, n in (("base", BASE_IMAGES), ("more", total)):
                os.makedirs(os.path.join(work, f"torchvision-{k}"))
                workers[k] = TorchvisionWorker(python, model, paths[:n], os.path.join(work, f"torchvision-{k}"))
            result["torchvision_torch_version"] = workers["base"].version
            contenders["torchvision (PyTorch)"] = lambda folder: workers[os.path.basename(folder)]()
        times = {name: [] for name in contenders}
        for r in range(args.repeats + 1):
            for name, run in contenders.items():
                base, more = run(folders["base"]), run(folders["more"])
                if r:  # the first round warms up and makes the cached exports
                    times[name].append((more - base) / args.cli_extra_images)
                print(f"  {name}: {base:.1f} s for {BASE_IMAGES} images, {more:.1f} s for {total}", flush=True)
        if python:
            for w in workers.values():
                w.close()
        result["per_extra_image_s"] = {name: summarize(ts) for name, ts in times.items()}
    return result


def print_cli(r):
    per = r["per_extra_image_s"]
    print(f"\ninfer.sh --images, seconds per extra image ({r['extra_images']} more in the same command), "
          f"SSD300-VGG16 fitted to {r['images']} sample images")
    print(f"{'contender':<24}{'median':>9}{'min':>9}{'max':>9}{'img/s':>8}{'vs torchvision':>16}")
    tv = per.get("torchvision (PyTorch)", {}).get("median")
    for name, s in per.items():
        ratio = f"{tv / s['median']:.2f}x" if tv else ""
        print(f"{name:<24}{s['median']:>9.3f}{s['min']:>9.3f}{s['max']:>9.3f}{1 / s['median']:>8.1f}{ratio:>16}")
