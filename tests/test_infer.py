"""Inference (``infer.sh``), publishing and the download path, end to end: train a tiny schedule, publish it, serve
it over HTTP on 127.0.0.1, and check that ``infer.sh`` with the URL finds what the checkpoint itself finds; and what a
user brings that goes wrong (phone photos, bombs, crafted weights, bad flags, a full disk) ends in one line."""
import functools
import http.server
import json
import os
import re
import shutil
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from tests.conftest import INFER_SH, REPO, decompression_bomb, last_line, plant_payload, run

pytestmark = pytest.mark.slow

SHAPES = {"circle", "square", "triangle", "ring", "cross", "star"}


@pytest.fixture(scope="module")
def trained(sample_dataset, tmp_path_factory):
    """A checkpoint of one SGD step on 2 sample images (the weights barely move, but they are ours)."""
    out = tmp_path_factory.mktemp("train")
    run([sys.executable, "-m", "cv.detection.ssd300_vgg16.train", "--data-path", str(sample_dataset),
         "--output-dir", str(out), "--train-subset", "2", "--val-subset", "1", "--batch-size", "2", "--epochs", "1",
         "--workers", "0", "--no-pretrained-backbone"], cwd=out)
    return out / "checkpoint_epoch0000"


@pytest.fixture(scope="module")
def images(sample_dataset, tmp_path_factory):
    """Three val images: two in a folder, one elsewhere under the same file name."""
    root = tmp_path_factory.mktemp("images")
    files = sorted(os.listdir(sample_dataset / "val2017"))[:3]
    (root / "folder").mkdir()
    (root / "other").mkdir()
    for f in files[:2]:
        shutil.copy(sample_dataset / "val2017" / f, root / "folder" / f)
    shutil.copy(sample_dataset / "val2017" / files[2], root / "other" / files[0])
    return root


def env_with_cache(cache):
    env = dict(os.environ, FLOWVISION_CACHE=str(cache))
    env.pop("SSD300_VGG16_URL", None)
    return env


def detections(output_dir):
    return {f: json.loads((output_dir / f).read_text()) for f in sorted(os.listdir(output_dir)) if f.endswith(".json")}


def assert_same_detections(reference, found, box_atol=1e-3, score_atol=1e-4):
    """Per image, the same labels in the same order, and boxes and scores equal within the tolerances."""
    assert found.keys() == reference.keys()
    for name, record in reference.items():
        ours, theirs = record["detections"], found[name]["detections"]
        assert [d["label"] for d in ours] == [d["label"] for d in theirs] and len(ours) > 0
        np.testing.assert_allclose([d["box"] for d in ours], [d["box"] for d in theirs], atol=box_atol)
        np.testing.assert_allclose([d["score"] for d in ours], [d["score"] for d in theirs], atol=score_atol)


def test_infer_on_images_folders_and_globs(trained, images, tmp_path):
    out = tmp_path / "out"
    res = run(["bash", INFER_SH, "--weights", str(trained), "--images", str(images / "folder"),
               str(images / "other" / "*.jpg"), "--score-threshold", "0.02", "--output-dir", str(out)], cwd=tmp_path)
    lines = [line for line in res.stdout.splitlines() if ": " in line and "detection" in line]
    # On a CPU the default backend is ONNX Runtime (its detections equal OneFlow's: tested below).
    assert len(lines) == 3 and f"weights: {trained}; 6 classes; backend onnxruntime, device cpu" in res.stdout
    found = detections(out)
    assert len(found) == 3  # the two files named alike got distinct outputs
    for name, record in found.items():
        assert {"image", "width", "height", "detections"} <= set(record)
        picture = Image.open(out / name.replace(".json", ".jpg"))
        assert picture.size == (record["width"], record["height"])
        for d in record["detections"]:
            assert d["score"] >= 0.02 and 1 <= d["label"] <= 6 and d["name"] in {
                "circle", "square", "triangle", "ring", "cross", "star"}
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 < x2 <= record["width"] and 0 <= y1 < y2 <= record["height"]
    with_boxes = [name for name, record in found.items() if record["detections"]]
    assert with_boxes  # the trained model finds shapes at this threshold, so the drawing is always checked:
    for name in with_boxes:
        original = np.asarray(Image.open(found[name]["image"]).convert("RGB"), dtype=np.int16)
        picture = np.asarray(Image.open(out / name.replace(".json", ".jpg")), dtype=np.int16)
        assert np.abs(picture - original).mean() > 1  # boxes were drawn


def test_infer_skips_unreadable_images_and_names_them(trained, images, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(next((images / "folder").iterdir()), folder / "good.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image")
    res = run(["bash", INFER_SH, "--weights", str(trained), "--images", str(folder), "--output-dir",
               str(tmp_path / "out")], cwd=tmp_path)
    assert f"{folder / 'broken.jpg'}: skipped, cannot be read" in res.stdout
    assert "1 of 2 images could not be read and were skipped" in res.stdout
    assert list(detections(tmp_path / "out")) == ["good.json"]


def test_infer_errors_name_what_is_wrong(trained, tmp_path):
    def fails(*args, expect=1):
        res = run(["bash", INFER_SH, *args], cwd=tmp_path, expect=expect)
        assert "Traceback" not in res.stderr
        return last_line(res.stderr)

    assert fails("--weights", trained, "--images", tmp_path / "nope.jpg") == \
        f"error: --images {tmp_path / 'nope.jpg'}: no such file or directory"
    assert fails("--weights", tmp_path / "missing") == f"error: --weights {tmp_path / 'missing'}: no such file or " \
                                                      "directory"
    assert fails("--weights", "s3://bucket/ssd300_vgg16.tar.gz") == "error: --weights s3://bucket/ssd300_vgg16.tar" \
        ".gz: no such file or directory (URLs must be http://, https:// or file://)"
    assert fails("--weights", trained, "--sha256", "0" * 64) == f"error: --sha256 checks a tarball; {trained} is " \
                                                                "a directory"
    (tmp_path / "file").write_text("x")
    assert fails("--weights", trained, "--output-dir", tmp_path / "file") == \
        f"error: --output-dir {tmp_path / 'file'} is a file, not a directory"
    assert fails("--weights", trained, "--coco-eval", "--data-path", tmp_path / "nodata") == \
        f"error: --data-path {tmp_path / 'nodata'}: no such file or directory"
    # Values argparse refuses before anything loads (exit status 2, the flag named).
    for flag, value, message in (("--score-threshold", "2", "must be between 0 and 1"),
                                 ("--batch-size", "0", "must be at least 1"),
                                 ("--batch-size", "-3", "must be at least 1"),
                                 ("--max-images", "0", "must be at least 1")):
        assert fails(flag, value, expect=2).endswith(f"argument {flag}: {message}, got {value}")


def phone_photo(path, pixels, orientation):
    """A JPEG as a phone stores it: the pixels as the sensor read them, and an EXIF orientation saying how to
    turn them for viewing."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())


def test_phone_photos_are_detected_and_drawn_as_viewers_show_them(trained, images, tmp_path):
    """A portrait photo stored sideways (EXIF orientation 6: turn 90 degrees clockwise to view) is detected as the
    upright picture it shows: exactly the detections of its pixels turned upright, in upright coordinates, and the
    JSON says so."""
    upright = np.asarray(Image.open(sorted((images / "folder").iterdir())[0]).convert("RGB"))
    (tmp_path / "in").mkdir()
    phone_photo(tmp_path / "in" / "phone.jpg", np.ascontiguousarray(np.rot90(upright)), 6)  # stored turned left
    stored = np.asarray(Image.open(tmp_path / "in" / "phone.jpg").convert("RGB"))
    assert stored.shape == (upright.shape[1], upright.shape[0], 3)
    # The same pixels turned right by hand, losslessly: what a viewer shows.
    Image.fromarray(np.ascontiguousarray(np.rot90(stored, k=-1))).save(tmp_path / "in" / "turned.png")
    run(["bash", INFER_SH, "--weights", trained, "--images", tmp_path / "in", "--score-threshold", "0.02",
         "--output-dir", tmp_path / "out"], cwd=tmp_path)
    found = detections(tmp_path / "out")
    phone, turned = found["phone.json"], found["turned.json"]
    assert (phone["width"], phone["height"]) == (turned["width"], turned["height"]) == upright.shape[1::-1]
    assert phone["exif_orientation"] == 6 and "orientation 6 applied" in phone["note"]
    assert turned["exif_orientation"] == 1 and "note" not in turned
    assert phone["detections"] == turned["detections"] and phone["detections"]
    assert Image.open(tmp_path / "out" / "phone.jpg").size == upright.shape[1::-1]


def test_a_decompression_bomb_is_skipped_and_named(trained, images, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(images / "folder", folder)
    decompression_bomb(folder / "bomb.png")
    res = run(["bash", INFER_SH, "--weights", trained, "--images", folder, "--output-dir", tmp_path / "out"],
              cwd=tmp_path)
    assert f"{folder / 'bomb.png'}: skipped, cannot be read: refused as a decompression bomb" in res.stdout
    assert "1 of 3 images could not be read and were skipped" in res.stdout
    assert len(detections(tmp_path / "out")) == 2


def test_a_full_output_disk_is_one_line_and_leaves_no_partial_file(trained, images, tmp_path, small_disk):
    out = small_disk(1)  # a drawn 400x300 JPEG is ~60 KB: a few fit, then the disk is full
    folder = tmp_path / "many"
    folder.mkdir()
    source = sorted((images / "folder").iterdir())[0]
    for i in range(40):
        shutil.copy(source, folder / f"{i:02d}.jpg")
    res = run(["bash", INFER_SH, "--weights", trained, "--images", folder, "--output-dir", out], cwd=tmp_path,
              expect=1)
    line = last_line(res.stderr)
    assert line.startswith("error: ") and "No space left on device" in line and str(out) in line
    for name in os.listdir(out):
        assert ".tmp-" not in name
        if name.endswith(".json"):
            json.loads((out / name).read_text())  # every file there is whole
        else:
            Image.open(out / name).load()


def serve(directory):
    """An HTTP server for ``directory`` on 127.0.0.1 (a free port), in a thread."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_published_weights_over_http_and_file_url_detect_what_the_checkpoint_does(trained, images, tmp_path):
    from cv.detection.ssd300_vgg16.publish import publish

    publish(str(trained), str(tmp_path / "zoo"))
    common = ["--images", str(images / "folder"), "--score-threshold", "0.02"]
    run(["bash", INFER_SH, "--weights", str(trained), "--output-dir", str(tmp_path / "a"), *common], cwd=tmp_path)
    server = serve(tmp_path / "zoo")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/ssd300_vgg16.tar.gz"
        res = run(["bash", INFER_SH, "--weights", url, "--output-dir", str(tmp_path / "b"), *common], cwd=tmp_path,
                  env=env_with_cache(tmp_path / "cache"))
    finally:
        server.shutdown()
    assert f"weights: {url}; 6 classes" in res.stdout
    # The tarball, its extraction and its marker; "onnx": the export of the default CPU backend.
    assert sorted(os.listdir(tmp_path / "cache")) == ["onnx", "ssd300_vgg16", "ssd300_vgg16.tar.gz",
                                                      "ssd300_vgg16.tar.gz.source"]
    # The classes keep their names through the tarball (its meta.json), not "class 5".
    names = {d["name"] for record in detections(tmp_path / "b").values() for d in record["detections"]}
    assert names and names <= SHAPES
    # --pretrained follows $SSD300_VGG16_URL (here a file:// URL: a local mirror).
    zoo_url = f"file://{tmp_path / 'zoo' / 'ssd300_vgg16.tar.gz'}"
    env = dict(env_with_cache(tmp_path / "cache2"), SSD300_VGG16_URL=zoo_url)
    res = run(["bash", INFER_SH, "--pretrained", "--output-dir", str(tmp_path / "c"), *common], cwd=tmp_path, env=env)
    assert "weights: the published COCO weights (file://" in res.stdout
    for other in ("b", "c"):
        assert_same_detections(detections(tmp_path / "a"), detections(tmp_path / other))
    # A checksum that does not match: one clear error, and nothing left in the cache.
    bad = run(["bash", INFER_SH, "--weights", f"file://{tmp_path / 'zoo' / 'ssd300_vgg16.tar.gz'}", "--sha256",
               "0" * 64, *common], cwd=tmp_path, env=env_with_cache(tmp_path / "cache3"), expect=1)
    assert "error:" in bad.stderr and "checksum" in bad.stderr and "Traceback" not in bad.stderr
    assert not os.path.exists(tmp_path / "cache3") or os.listdir(tmp_path / "cache3") == []


def crafted_tarball(trained, directory, marker):
    """The zoo tarball of ``trained`` with a pickled_data that runs ``touch marker`` when unpickled."""
    import tarfile

    from cv.detection.ssd300_vgg16.publish import publish

    publish(str(trained), str(directory / "clean"))
    with tarfile.open(directory / "clean" / "ssd300_vgg16.tar.gz") as tar:
        tar.extractall(directory / "unpacked")
    plant_payload(directory / "unpacked" / "ssd300_vgg16", marker)
    with tarfile.open(directory / "ssd300_vgg16.tar.gz", "w:gz") as tar:
        tar.add(directory / "unpacked" / "ssd300_vgg16", arcname="ssd300_vgg16")
    return directory / "ssd300_vgg16.tar.gz"


def test_crafted_weights_never_run_in_any_loading_path(trained, tmp_path):
    """A tarball (path, file:// and http:// URL) or directory whose pickled_data runs a command: refused by infer.sh
    and by scripts/publish.py, naming the file and the global; the command never runs."""
    marker = tmp_path / "pwned"
    tarball = crafted_tarball(trained, tmp_path / "zoo", marker)
    server = serve(tmp_path / "zoo")
    sources = [str(tarball), f"file://{tarball}", f"http://127.0.0.1:{server.server_address[1]}/ssd300_vgg16.tar.gz",
               str(tmp_path / "zoo" / "unpacked" / "ssd300_vgg16")]
    try:
        for i, source in enumerate(sources):
            res = run(["bash", INFER_SH, "--weights", source, "--images", trained], cwd=tmp_path,
                      env=env_with_cache(tmp_path / f"cache{i}"), expect=1)
            line = last_line(res.stderr)
            assert line.startswith("error: refusing to load ") and "pickled_data: it asks for the Python global " \
                "posix.system, which saved weights never need" in line, res.stderr[-2000:]
            assert not marker.exists()
    finally:
        server.shutdown()
    res = run([sys.executable, os.path.join(REPO, "scripts", "publish.py"), sources[-1], "-o", tmp_path / "pub"],
              cwd=tmp_path, expect=1)
    assert "refusing to load" in last_line(res.stderr) and not marker.exists()


def test_a_local_tarball_is_checked_against_the_sha256_beside_it(trained, images, tmp_path):
    from cv.detection.ssd300_vgg16.publish import publish

    publish(str(trained), str(tmp_path / "zoo"))
    tarball = tmp_path / "zoo" / "ssd300_vgg16.tar.gz"
    common = ["--weights", tarball, "--images", images / "folder", "--output-dir", tmp_path / "out"]
    run(["bash", INFER_SH, *common], cwd=tmp_path, env=env_with_cache(tmp_path / "cache"))
    (tmp_path / "zoo" / "ssd300_vgg16.tar.gz.sha256").write_text("0" * 64 + "  ssd300_vgg16.tar.gz\n")
    res = run(["bash", INFER_SH, *common], cwd=tmp_path, env=env_with_cache(tmp_path / "cache2"), expect=1)
    line = last_line(res.stderr)
    assert line.startswith("error: ") and str(tarball) in line and "sha256" in line


def test_coco_eval_mode_prints_the_ap_table(trained, sample_dataset, tmp_path):
    res = run(["bash", INFER_SH, "--weights", str(trained), "--coco-eval", "--data-path", str(sample_dataset),
               "--max-images", "2", "--workers", "0", "--output-dir", str(tmp_path)], cwd=tmp_path)
    assert "evaluating on 2 images" in res.stdout
    assert res.stdout.count("Average Precision") == 6 and res.stdout.count("Average Recall") == 6
    results = json.loads((tmp_path / "detections_val.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score"} == set(results[0])
    # The printed table holds pycocotools' own numbers on the written file (the first 2 val images by id).
    from cv.detection.evaluation.coco import format_table
    from reference import pycocotools_stats

    dataset = json.loads((sample_dataset / "annotations" / "instances_val2017.json").read_text())
    first_two = sorted(image["id"] for image in dataset["images"])[:2]
    assert format_table(pycocotools_stats(dataset, str(tmp_path / "detections_val.json"), first_two)) in res.stdout
    assert "per class (" in res.stdout  # the per-class table, and its pictures beside the detections
    assert all((tmp_path / f"detections_val_{kind}").stat().st_size > 0 for kind in ("pr.png", "confusion.png",
                                                                                     "report.json"))


def test_an_unreadable_image_in_a_loader_worker_is_one_line(trained, sample_dataset, tmp_path):
    """Evaluation with loader workers: the worker's error reaches the user as its own one line, naming the image,
    not as "Caught OSError in DataLoader worker process 0" and two tracebacks."""
    data = tmp_path / "data"
    shutil.copytree(sample_dataset, data)
    broken = sorted((data / "val2017").iterdir())[1]
    broken.write_bytes(broken.read_bytes()[:300])
    image_id = int(broken.stem)
    res = run(["bash", INFER_SH, "--weights", trained, "--coco-eval", "--data-path", data, "--max-images", "4",
               "--workers", "2", "--batch-size", "1", "--output-dir", tmp_path / "out"], tmp_path, expect=1)
    assert "Traceback" not in res.stderr and "DataLoader worker" not in res.stderr
    assert last_line(res.stderr).startswith(f"error: image {image_id} ({broken}) cannot be read: ")


def test_onnxruntime_backend_gives_the_same_detections(trained, images, tmp_path):
    common = ["--weights", str(trained), "--images", str(images / "folder"), "--score-threshold", "0.02"]
    env = env_with_cache(tmp_path / "cache")
    run(["bash", INFER_SH, *common, "--backend", "oneflow", "--output-dir", str(tmp_path / "oneflow")], cwd=tmp_path,
        env=env)
    first = run(["bash", INFER_SH, *common, "--output-dir", str(tmp_path / "ort")], cwd=tmp_path, env=env)
    assert "exporting the network to ONNX" in first.stdout and "backend onnxruntime" in first.stdout
    assert re.search(r"exported in \d+ s", first.stdout), first.stdout  # the one-off cost, said once
    onnx_files = sorted(f for f in os.listdir(tmp_path / "cache" / "onnx") if f.endswith(".onnx"))
    assert len(onnx_files) == 1 and onnx_files[0].endswith("-b1.onnx")
    again = run(["bash", INFER_SH, *common, "--backend", "onnxruntime", "--output-dir", str(tmp_path / "ort2")],
                cwd=tmp_path, env=env)
    assert "exporting" not in again.stdout  # the export is cached per weights
    for other in ("ort", "ort2"):
        # The files round boxes to 0.01 px and scores to 1e-4: values a hair apart can round one step apart.
        assert_same_detections(detections(tmp_path / "oneflow"), detections(tmp_path / other), 0.0101, 1.01e-4)

    # Unrounded, in-process, with the cached export: boxes within 1e-3 px, same labels in the same order.
    import oneflow as flow

    from cv.detection.data.base import load_rgb
    from cv.detection.ssd300_vgg16.detector import load_model
    from cv.detection.deploy.onnx_backend import OnnxRuntimeSSD
    from cv.detection.data.transforms import to_chw_float

    model, _, _ = load_model(str(trained))
    detector = OnnxRuntimeSSD(model, str(tmp_path / "cache" / "onnx" / onnx_files[0]))
    batch = [flow.tensor(to_chw_float(load_rgb(p))) for p in sorted((images / "folder").iterdir())]
    with flow.no_grad():
        expected = model(batch)
    for e, o in zip(expected, detector(batch)):
        assert e["labels"].numpy().tolist() == o["labels"].numpy().tolist() and len(e["labels"]) == 200
        np.testing.assert_allclose(o["boxes"].numpy(), e["boxes"].numpy(), atol=1e-3)
        np.testing.assert_allclose(o["scores"].numpy(), e["scores"].numpy(), atol=1e-5)


def test_export_script_writes_model_and_description(trained, tmp_path):
    out = run([sys.executable, os.path.join(REPO, "scripts", "export_onnx.py"), "--weights", str(trained),
               "--output", str(tmp_path / "m.onnx"), "--network-only", "--batch-size", "2"], cwd=tmp_path)
    assert "wrote" in out.stdout
    info = json.loads((tmp_path / "m.onnx.json").read_text())
    assert info["batch_size"] == 2 and info["grid_sizes"] == [[38, 38], [19, 19], [10, 10], [5, 5], [3, 3], [1, 1]]
    import onnx

    model = onnx.load(str(tmp_path / "m.onnx"))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 300, 300]
    assert [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output] == [[2, 8732, 7],
                                                                                                 [2, 8732, 4]]
