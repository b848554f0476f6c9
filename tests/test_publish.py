"""Publishing a checkpoint (cv/detection/ssd300_vgg16/publish.py, scripts/publish.py): the tarball holds the weights and
nothing else, in the layout flowvision's loader reads, reproducibly; the digest and the card tell the truth; bad
inputs fail clearly. One small set of saves is shared by all tests (saving 26M parameters takes seconds)."""
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile

import numpy as np
import oneflow as flow
import pytest

from cv.detection.engine import checkpoint as ckpt
from cv.detection.evaluation.coco import STAT_NAMES
from cv.detection.ssd300_vgg16.publish import PublishError, publish
from cv.detection.ssd300_vgg16 import ssd300_vgg16

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 7
LABEL_NAMES = ["__background__", "circle", "square", "triangle", "star", "cross", "ring"]
STATS = {name: round(0.01 * (i + 1), 3) for i, name in enumerate(STAT_NAMES)}
ARGS = {"data_path": "/data/shapes", "epochs": 3, "batch_size": 4, "lr": 0.002, "lr_steps": [2], "amp": False}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A train.py-like checkpoint (with SGD momentum buffers) and the same weights as a bare state dict, the
    checkpoint published twice (into a/ and b/), and the model the weights came from."""
    root = tmp_path_factory.mktemp("publish")
    flow.manual_seed(0)
    model = ssd300_vgg16(num_classes=NUM_CLASSES)
    optimizer = flow.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    # One fake step on a cheap loss, so that the optimizer state holds a momentum buffer per parameter: the
    # payload then carries twice the weights' size of state that must not reach the tarball.
    sum(p.sum() for p in model.parameters() if p.requires_grad).backward()
    optimizer.step()
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 2, "iteration": 150,
               "args": ARGS, "rng": ckpt.rng_state(), "amp_scaler": None,
               "meta": {"arch": "ssd300_vgg16", "num_classes": NUM_CLASSES, "label_names": LABEL_NAMES,
                        "label_to_category_id": {i: i for i in range(1, NUM_CLASSES)},
                        "dataset": ARGS["data_path"], "stats": STATS}}
    assert payload["optimizer"]["state"], "the fake step should have created momentum buffers"
    out = root / "train_out"
    out.mkdir()
    checkpoint = ckpt.save_checkpoint(str(out), payload, 2, ap=STATS["AP"])
    bare = root / "bare_state_dict"
    flow.save(model.state_dict(), str(bare))
    card_a = publish(checkpoint, str(root / "a"))
    card_b = publish(checkpoint, str(root / "b"))
    card_bare = publish(str(bare), str(root / "bare_published"))
    return {"root": root, "model": model, "checkpoint": checkpoint, "bare": str(bare), "a": card_a, "b": card_b,
            "bare_published": card_bare}


def _extract(tarball, into):
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
        tar.extractall(into)
    return members


@pytest.mark.slow
def test_tarball_holds_exactly_the_model_weights(published, tmp_path):
    tarball = published["a"]["paths"]["tarball"]
    assert os.path.basename(tarball) == "ssd300_vgg16.tar.gz"
    members = _extract(tarball, tmp_path)
    assert {m.name.split("/")[0] for m in members} == {"ssd300_vgg16"}
    assert members[0].name == "ssd300_vgg16" and members[0].isdir()  # flowvision loads members[0]
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == "" for m in members)
    with open(tarball, "rb") as f:
        header = f.read(10)
    assert header[:2] == b"\x1f\x8b" and header[4:8] == b"\0\0\0\0"  # gzip, header mtime 0
    with gzip.open(tarball) as g:  # no file name in the gzip header (FNAME flag unset)
        assert header[3] & 0x08 == 0 and g.read(1)

    # Beside the weights, what infer.sh names the classes by (flow.load and flowvision ignore it).
    meta = json.loads((tmp_path / "ssd300_vgg16" / "meta.json").read_text())
    assert meta == {"arch": "ssd300_vgg16", "num_classes": NUM_CLASSES, "label_names": LABEL_NAMES,
                    "label_to_category_id": {str(i): i for i in range(1, NUM_CLASSES)}}
    loaded = flow.load(str(tmp_path / "ssd300_vgg16"))
    reference = published["model"].state_dict()
    assert list(loaded) == list(reference) and len(loaded) == 71  # no optimizer state, no rng, no args
    assert all(isinstance(t, flow.Tensor) and t.device == flow.device("cpu") for t in loaded.values())
    fresh = ssd300_vgg16(num_classes=NUM_CLASSES)
    fresh.load_state_dict(loaded)
    for key, value in fresh.state_dict().items():
        assert np.array_equal(value.numpy(), reference[key].numpy()), key
    # The weights alone: far smaller than the checkpoint, which also carries the momentum buffers.
    size = lambda d: sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)  # noqa
    assert size(tmp_path / "ssd300_vgg16") < 0.6 * size(published["checkpoint"])


@pytest.mark.slow
def test_flowvision_loader_reads_the_tarball(published, tmp_path, monkeypatch):
    from flowvision.models.detection import ssd300_vgg16 as flowvision_ssd300_vgg16
    from flowvision.models.utils import load_state_dict_from_url

    monkeypatch.setenv("FLOWVISION_CACHE", str(tmp_path / "cache"))  # never the real ~/.oneflow
    tarball = published["a"]["paths"]["tarball"]
    state = load_state_dict_from_url("file://" + os.path.abspath(tarball), model_dir=str(tmp_path / "models"),
                                     progress=False)
    assert os.path.isfile(tarball), "the loader must work on its own copy"
    assert os.path.isdir(tmp_path / "models" / "ssd300_vgg16")
    model = flowvision_ssd300_vgg16(pretrained=False, pretrained_backbone=False, num_classes=NUM_CLASSES)
    model.load_state_dict(state)
    ours = published["model"].state_dict()
    assert np.array_equal(model.state_dict()["head.classification_head.module_list.0.weight"].numpy(),
                          ours["head.classification_head.module_list.0.weight"].numpy())


@pytest.mark.slow
def test_sha256_file_matches(published):
    paths = published["a"]["paths"]
    with open(paths["tarball"], "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(paths["sha256"]) as f:
        assert f.read() == f"{digest}  ssd300_vgg16.tar.gz\n"
    assert published["a"]["artifact"]["sha256"] == digest
    assert published["a"]["artifact"]["bytes"] == os.path.getsize(paths["tarball"])
    # sha256sum itself agrees, run where the file is (as a user would).
    check = subprocess.run(["sha256sum", "-c", os.path.basename(paths["sha256"])], capture_output=True, text=True,
                           cwd=os.path.dirname(paths["sha256"]))
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.slow
def test_card(published):
    paths = published["a"]["paths"]
    with open(paths["card_json"]) as f:
        card = json.load(f)
    model = published["model"]
    assert card["name"] == "ssd300_vgg16"
    assert card["architecture"]["name"] == "SSD300" and card["architecture"]["backbone"] == "VGG16"
    assert card["architecture"]["paper"] == "https://arxiv.org/abs/1512.02325"
    assert card["num_classes"] == NUM_CLASSES and card["label_names"] == LABEL_NAMES
    assert card["parameters"] == sum(t.numel() for t in model.state_dict().values())
    assert card["parameters"] == sum(p.numel() for p in model.parameters())
    assert card["tensors"] == 71
    ev = card["evaluation"]
    assert ev["stats"] == STATS and ev["box_ap"] == round(100 * STATS["AP"], 1)
    assert ev["dataset"] == ARGS["data_path"] and ev["epoch"] == 2
    assert card["training"]["args"] == ARGS and card["training"]["iteration"] == 150
    assert card["source"]["commit"] and card["source"]["commit"] != "unknown"  # this is a git checkout
    assert card["source"]["checkpoint"] == os.path.abspath(published["checkpoint"])
    assert card["published"][:4].isdigit() and card["unknown"] == []
    assert "infer.sh --weights" in card["usage"]["infer"]

    with open(paths["card_md"]) as f:
        md = f.read()
    assert md.startswith("# ssd300_vgg16\n")
    assert f"{card['parameters']:,}" in md and card["artifact"]["sha256"] in md
    assert "| AP @ IoU 0.50:0.95 | 1.0 |" in md and "| AR large | 12.0 |" in md
    assert "infer.sh --weights" in md and "load_state_dict_from_url" in md and "circle" in md


@pytest.mark.slow
def test_publishing_twice_is_byte_identical_and_leaves_no_temporaries(published):
    a, b = published["a"]["paths"], published["b"]["paths"]
    with open(a["tarball"], "rb") as fa, open(b["tarball"], "rb") as fb:
        assert fa.read() == fb.read()
    for card in (published["a"], published["b"]):
        directory = os.path.dirname(card["paths"]["tarball"])
        names = ["ssd300_vgg16.json", "ssd300_vgg16.md", "ssd300_vgg16.tar.gz", "ssd300_vgg16.tar.gz.sha256"]
        hidden = sorted(n for n in os.listdir(directory) if n.startswith("."))
        assert sorted(n for n in os.listdir(directory) if not n.startswith(".")) == names
        assert hidden[:2] == [".lock", ".ssd300_vgg16.current"] and len(hidden) == 3  # and the one set
        assert sorted(os.listdir(os.path.join(directory, hidden[2]))) == names


@pytest.mark.slow
def test_cli_on_a_bare_state_dict(published, tmp_path):
    """From another directory, in another process (so OneFlow's tensor naming starts elsewhere): a bare state
    dict publishes to the very same tarball as in this process, holding the same weight files as the checkpoint's,
    and the card says what it cannot know."""
    out = tmp_path / "cli_out"
    run = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "publish.py"), published["bare"],
                          "--output-dir", str(out)], capture_output=True, text=True, cwd=str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert str(out / "ssd300_vgg16.tar.gz") in run.stdout and str(out / "ssd300_vgg16.md") in run.stdout
    with open(out / "ssd300_vgg16.tar.gz", "rb") as f1:
        assert f1.read() == open(published["bare_published"]["paths"]["tarball"], "rb").read()

    def files(tarball):
        with tarfile.open(tarball) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}

    bare, full = files(out / "ssd300_vgg16.tar.gz"), files(published["a"]["paths"]["tarball"])
    assert bare.keys() == full.keys()
    assert all(bare[k] == full[k] for k in bare if not k.endswith("meta.json"))  # the weights, byte for byte
    with open(out / "ssd300_vgg16.json") as f:
        card = json.load(f)
    assert card["num_classes"] == NUM_CLASSES and card["source"]["kind"] == "bare state dict"
    assert card["evaluation"] is None and card["training"] is None and card["label_names"] is None
    assert set(card["unknown"]) == {"label_names", "evaluation", "training"}
    with open(out / "ssd300_vgg16.md") as f:
        assert "Unknown" in f.read()


def test_missing_path_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "no_such_checkpoint")
    with pytest.raises(FileNotFoundError, match="no_such_checkpoint"):
        publish(missing, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_not_an_ssd_state_dict_is_a_clear_error(tmp_path):
    linear = str(tmp_path / "linear")
    flow.save(flow.nn.Linear(3, 2).state_dict(), linear)
    with pytest.raises(PublishError, match=f"{linear} is not an SSD300-VGG16 state dict.*no head"):
        publish(linear, str(tmp_path / "out"))
    # Right head, nothing else: num_classes is inferred (7) but strict loading names what is missing.
    head_only = str(tmp_path / "head_only")
    flow.save({"head.classification_head.module_list.0.weight": flow.zeros(4 * NUM_CLASSES, 512, 3, 3)}, head_only)
    with pytest.raises(PublishError, match=f"{head_only} is not an SSD300-VGG16 state dict \\(7 classes.*70 missing"):
        publish(head_only, str(tmp_path / "out"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PublishError, match=str(empty)):
        publish(str(empty), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "ssd300_vgg16.tar.gz")


@pytest.mark.slow
def test_training_output_dir_names_its_checkpoints(published, tmp_path):
    out_dir = os.path.dirname(published["checkpoint"])
    with pytest.raises(PublishError, match="training output directory.*checkpoint_epoch0002"):
        publish(out_dir, str(tmp_path / "out"))


def test_cli_error_exit_code(tmp_path):
    run = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "publish.py"), str(tmp_path / "nope"),
                          "-o", str(tmp_path / "out")], capture_output=True, text=True, cwd=str(tmp_path))
    assert run.returncode == 1 and "nope" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow
def test_a_full_disk_leaves_no_partial_artefact(published, small_disk):
    """The tarball (about 100 MB here) does not fit: publishing fails before writing anything, naming the file,
    and what an earlier publish.py left there (plain files; here only a tarball) is served as it was."""
    out = small_disk(30)
    (out / "ssd300_vgg16.tar.gz").write_bytes(b"an earlier tarball")
    with pytest.raises(OSError) as err:
        publish(published["checkpoint"], str(out))
    assert err.value.strerror == "No space left on device" and err.value.filename == str(out / "ssd300_vgg16.tar.gz")
    assert f"{out} serves the set it served before, unchanged" in str(err.value)
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == sorted(
        ["ssd300_vgg16.tar.gz", "ssd300_vgg16.tar.gz.sha256", "ssd300_vgg16.json", "ssd300_vgg16.md"])
    assert (out / "ssd300_vgg16.tar.gz").read_bytes() == b"an earlier tarball"
    assert not os.path.exists(out / "ssd300_vgg16.md")  # the link leads nowhere: the earlier set had no card


# ------------------------------------------------------------------------------------- the set, replaced whole
# Fast: cv.detection.utils.fileset with small stand-in files. The slow tests further down do the same with
# publish.py and real weights.

FILES = ["w.tar.gz", "w.tar.gz.sha256", "w.json", "w.md"]
STEPS = ["publish:built", "publish:staged", "publish:linked", "publish:switched"]


def _stand_in_set(tag, tarball_bytes=100):
    """``{name: bytes}`` of a set named ``tag``: a tarball of ``tarball_bytes`` and files that describe it."""
    blob = (tag.encode() * tarball_bytes)[:tarball_bytes]
    digest = hashlib.sha256(blob).hexdigest()
    return {"w.tar.gz": blob, "w.tar.gz.sha256": f"{digest}  w.tar.gz\n".encode(),
            "w.json": json.dumps({"set": tag, "sha256": digest}).encode(), "w.md": f"# {tag}\n".encode()}


def _write_set(directory, contents):
    for name, data in contents.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    return contents


def _served(folder):
    """What a reader finds under the four names: ``{name: bytes}``, or None for a name that leads nowhere; the
    listing (hidden names aside) is always the four names or nothing."""
    visible = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    assert visible in ([], sorted(FILES)), visible
    return {n: open(os.path.join(folder, n), "rb").read() if os.path.exists(os.path.join(folder, n)) else None
            for n in FILES}


def _replace(folder, tag, tarball_bytes=100, need_bytes=0):
    from cv.detection.utils import fileset

    with fileset.replace(str(folder), "w", FILES, need_bytes) as staging:
        return _write_set(staging, _stand_in_set(tag, tarball_bytes))


def test_a_set_is_replaced_whole_and_the_names_stay(tmp_path):
    from cv.detection.utils import fileset

    one = _replace(tmp_path, "one")
    assert _served(tmp_path) == one
    assert all(os.readlink(tmp_path / n) == f".w.current/{n}" for n in FILES)
    two = _replace(tmp_path, "two")
    assert _served(tmp_path) == two
    # The replaced set stays (hidden) until the next publish, for a reader who resolved the names before the switch.
    sets = sorted(n for n in os.listdir(tmp_path) if n.startswith(".w.set-"))
    assert len(sets) == 2 and os.readlink(tmp_path / ".w.current") in sets
    three = _replace(tmp_path, "three")
    assert _served(tmp_path) == three
    assert len([n for n in os.listdir(tmp_path) if n.startswith(".w.set-")]) == 2
    assert sorted(os.listdir(tmp_path)) == sorted(FILES + [".lock", ".w.current"] +
                                                   [n for n in os.listdir(tmp_path) if n.startswith(".w.set-")])
    # What a reader of two files does: resolve one name, read the rest beside it.
    real = os.path.realpath(tmp_path / "w.tar.gz")
    assert open(real + ".sha256", "rb").read() == three["w.tar.gz.sha256"]
    assert fileset.current(str(tmp_path), "w") == os.path.dirname(real)


def test_no_room_for_the_new_set_keeps_the_old_one_byte_for_byte(small_disk):
    from cv.detection.utils import fileset

    disk = small_disk(1)
    old = _replace(disk, "old", tarball_bytes=600_000)
    # Refused before anything is written: the caller's estimate does not fit.
    with pytest.raises(fileset.SetNotReplaced) as err:
        _replace(disk, "new", tarball_bytes=600_000, need_bytes=600_000)
    assert err.value.strerror == "No space left on device" and err.value.filename == os.path.join(disk, "w.tar.gz")
    assert "the new set needs about 1 MB" in str(err.value)
    assert f"{disk} serves the set it served before, unchanged" in str(err.value)
    assert hashlib.sha256(old["w.tar.gz"]).hexdigest()[:16] in str(err.value)
    assert _served(disk) == old
    # The estimate fits but the writing does not (an estimate too low, another writer): the same outcome, and no
    # temporary is left (no hidden name but the lock, the pointer and the one set).
    with pytest.raises(fileset.SetNotReplaced) as err:
        _replace(disk, "new", tarball_bytes=600_000)
    assert err.value.strerror == "No space left on device" and err.value.filename == os.path.join(disk, "w.tar.gz")
    assert "serves the set it served before, unchanged" in str(err.value)
    assert _served(disk) == old
    assert len([n for n in os.listdir(disk) if n.startswith(".")]) == 3
    check = subprocess.run(["sha256sum", "-c", "w.tar.gz.sha256"], capture_output=True, text=True, cwd=disk)
    assert check.returncode == 0 and check.stdout == "w.tar.gz: OK\n", check.stdout + check.stderr


def test_plain_files_of_an_earlier_publish_become_the_served_set(tmp_path):
    """A folder written by an earlier publish.py (plain files; here the partial set issue 21 left: a tarball
    alone) is adopted as it is, by hard links, before anything else happens to it."""
    from cv.detection.utils import fileset

    (tmp_path / "w.tar.gz").write_bytes(b"an earlier tarball")
    inode = os.stat(tmp_path / "w.tar.gz").st_ino
    served = fileset.recover(str(tmp_path), "w", FILES)
    assert os.stat(os.path.join(served, "w.tar.gz")).st_ino == inode
    assert _served(tmp_path) == {"w.tar.gz": b"an earlier tarball", "w.tar.gz.sha256": None, "w.json": None,
                                 "w.md": None}
    assert all(os.path.islink(tmp_path / n) for n in FILES)
    assert fileset.recover(str(tmp_path), "w", FILES) == served  # recovering a recovered folder changes nothing
    new = _replace(tmp_path, "new")
    assert _served(tmp_path) == new


_REPLACER = """
import os
import signal
from cv.detection.utils import fileset
with fileset.replace({folder!r}, "w", {files!r}, 0) as staging:
    for name, data in {contents!r}.items():
        with open(os.path.join(staging, name), "wb") as f:
            f.write(data)
"""


def _stop_at(step, folder):
    """Start a replacement of ``folder``'s set by the set "new", stopped (SIGSTOP) at ``step``: the Popen."""
    env = dict(os.environ, CV_PAUSE_AT=step, PYTHONPATH=REPO)
    code = _REPLACER.format(folder=str(folder), files=FILES, contents=_stand_in_set("new"))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    _wait_stopped(proc)
    return proc


def _wait_stopped(proc):
    """Block until ``proc`` stops itself at its pause point (no timing involved); fail if it exits instead."""
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"exited ({status}) before its pause point: {proc.stderr.read()}"


@pytest.mark.parametrize("first", [False, True], ids=["republish", "first publish"])
def test_kill_9_at_each_step_leaves_one_complete_set(tmp_path, first):
    from cv.detection.utils import fileset

    for step in STEPS:
        folder = tmp_path / f"{step.split(':')[1]}-{first}"
        folder.mkdir()
        old = None if first else _replace(folder, "old")
        before = {n: None for n in FILES} if first else old
        after = _stand_in_set("new") if step == "publish:switched" else before
        proc = _stop_at(step, folder)
        assert _served(folder) == after, step  # a reader during the publish, at this very point
        proc.kill()
        proc.wait()
        assert _served(folder) == after, step
        # The next publish recovers: no temporary or unserved set is left, and it replaces the set as usual.
        served = fileset.recover(str(folder), "w", FILES)
        assert not [n for n in os.listdir(folder) if ".tmp-" in n]
        assert [os.path.join(folder, n) for n in os.listdir(folder) if ".set-" in n] == ([served] if served else [])
        assert _served(folder) == after, step
        again = _replace(folder, "again")
        assert _served(folder) == again, step


# Slow: the same with publish.py and real weights (a set of about 100 MB).

PUBLISHED = sorted(["ssd300_vgg16.tar.gz", "ssd300_vgg16.tar.gz.sha256", "ssd300_vgg16.json", "ssd300_vgg16.md"])
PUBLISH_STEPS = ["publish:tarball"] + STEPS  # the first: half-way through writing the tarball


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory):
    """A bare state dict of other weights than ``published``'s, to republish over them."""
    path = tmp_path_factory.mktemp("other") / "weights"
    flow.manual_seed(1)
    flow.save(ssd300_vgg16(num_classes=NUM_CLASSES).state_dict(), str(path))
    return str(path)


def _serving(folder):
    """A reader's check of a published folder: the four names, leading to one complete set (the tarball, its
    digest and both cards agree); the tarball's SHA-256. Reads as a careful reader does: resolves one name, then
    reads the set's other files beside what it resolved to."""
    from cv.detection.utils.hub import file_sha256

    assert sorted(n for n in os.listdir(folder) if not n.startswith(".")) == PUBLISHED
    real = os.path.realpath(os.path.join(folder, "ssd300_vgg16.tar.gz"))
    digest = file_sha256(real)

    def beside(suffix):
        with open(os.path.join(os.path.dirname(real), "ssd300_vgg16" + suffix)) as f:
            return f.read()

    assert beside(".tar.gz.sha256") == f"{digest}  ssd300_vgg16.tar.gz\n"
    assert json.loads(beside(".json"))["artifact"]["sha256"] == digest and digest in beside(".md")
    return digest


def _sha256sum_c(folder):
    """``sha256sum -c`` as a user runs it, in the folder (it follows the links)."""
    check = subprocess.run(["sha256sum", "-c", "ssd300_vgg16.tar.gz.sha256"], capture_output=True, text=True,
                           cwd=folder)
    assert check.returncode == 0 and check.stdout == "ssd300_vgg16.tar.gz: OK\n", check.stdout + check.stderr


def _start_publish(weights, folder, pause_at):
    env = dict(os.environ, CV_PAUSE_AT=",".join(pause_at), PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", "publish.py"), weights, "-o",
                             str(folder)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _copy_of(published, tmp_path, label):
    """A copy of the folder ``published`` wrote (set files hard-linked: a publish never writes into a file)."""
    import shutil

    source = os.path.dirname(published["a"]["paths"]["tarball"])
    return shutil.copytree(source, tmp_path / label, symlinks=True, copy_function=os.link,
                           ignore=shutil.ignore_patterns(".lock"))


@pytest.mark.slow
def test_republishing_on_a_disk_with_room_for_one_set(published, other_weights, small_disk):
    disk = small_disk(150)
    publish(published["checkpoint"], str(disk))
    old = _serving(disk)
    before = {n: (disk / n).read_bytes() for n in PUBLISHED}
    run = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "publish.py"), other_weights, "-o",
                          str(disk)], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    assert run.returncode == 1, run.stdout + run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: No space left on device: {disk}/ssd300_vgg16.tar.gz (the new set needs about ")
    assert f"; {disk} serves the set it served before, unchanged (installed " in line
    assert line.endswith(f", sha256 {old[:16]}...)"), line
    assert {n: (disk / n).read_bytes() for n in PUBLISHED} == before
    assert _serving(disk) == old
    _sha256sum_c(disk)


@pytest.mark.slow
def test_kill_9_during_a_republish_leaves_one_complete_set(published, other_weights, tmp_path):
    old, new = _serving(os.path.dirname(published["a"]["paths"]["tarball"])), None
    for step in PUBLISH_STEPS:
        folder = _copy_of(published, tmp_path, step.split(":")[1])
        proc = _start_publish(other_weights, folder, [step])
        _wait_stopped(proc)
        during = _serving(folder)
        proc.kill()
        proc.communicate()
        assert _serving(folder) == during, step
        _sha256sum_c(folder)
        if step == "publish:switched":
            new = during
        else:
            assert during == old, step
    assert new not in (None, old)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["publish:tarball", "publish:switched"])
def test_sigterm_during_a_republish_says_which_set_is_served(published, other_weights, tmp_path, step):
    folder = _copy_of(published, tmp_path, "folder")
    old = _serving(folder)
    proc = _start_publish(other_weights, folder, [step])
    _wait_stopped(proc)
    proc.terminate()
    proc.send_signal(signal.SIGCONT)  # the handler runs as the process goes on
    _, err = proc.communicate()
    assert proc.returncode == 143, err
    served = _serving(folder)
    which = ("the new set" if step == "publish:switched" else "the set it served before, unchanged")
    assert err.strip().splitlines()[-1].startswith(
        f"stopped: SIGTERM received; {folder} serves {which} (installed "), err
    assert (served == old) == (step != "publish:switched")
    assert not [n for n in os.listdir(folder) if ".tmp-" in n]


@pytest.mark.slow
def test_a_reader_sees_one_complete_set_throughout_a_republish(published, other_weights, tmp_path):
    """A reader verifies the folder over and over while it is republished; the publish also stops at each of its
    steps until the reader has verified the folder there (events, not timing)."""
    import threading

    folder = _copy_of(published, tmp_path, "folder")
    old = _serving(folder)
    seen, errors, passes, changed, done = [], [], [0], threading.Condition(), threading.Event()

    def reader():
        while not done.is_set():
            try:
                seen.append(_serving(folder))
            except Exception as e:  # noqa: BLE001 (reported by the test)
                errors.append(repr(e))
            with changed:
                passes[0] += 1
                changed.notify_all()

    def two_more_passes():
        with changed:
            target = passes[0] + 2
            assert changed.wait_for(lambda: passes[0] >= target or errors, timeout=600)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        proc = _start_publish(other_weights, folder, PUBLISH_STEPS)
        for _ in PUBLISH_STEPS:
            _wait_stopped(proc)
            two_more_passes()
            _sha256sum_c(folder)
            proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate()
        assert proc.returncode == 0, out + err
        two_more_passes()
    finally:
        done.set()
        thread.join()
    new = _serving(folder)
    assert errors == [] and new != old
    assert set(seen) == {old, new} and seen == sorted(seen, key=[old, new].index)  # old, then new, never back
