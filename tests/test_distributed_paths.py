"""The paths of real-scale training that a single-process CPU run never takes, run for real on one machine:
two nodes training together (each in its own network namespace, with its own address, as two machines), and the
recipe's default start from the ImageNet VGG16 backbone, downloaded from the zoo by one process while the others
wait (here from an HTTP server on 127.0.0.1 that serves flowvision's own VGG16 weights)."""
import functools
import hashlib
import http.server
import os
import subprocess
import tarfile
import threading

import numpy as np
import oneflow as flow
import pytest

from cv.detection.engine import checkpoint as ckpt
from cv.detection.engine.trainer import read_metrics
from tests.conftest import (TRAIN_SH, free_port, missing_capability, quick_args, rank_weight_digests,
                            rank_weights_env, run)

pytestmark = pytest.mark.slow


@pytest.fixture
def two_hosts():
    """Two network namespaces joined by a veth pair, 10.231.N.1 and 10.231.N.2: two machines as OneFlow sees
    them (it tells nodes apart by the address their connections come from). Namespaces need root: without it,
    :func:`tests.conftest.missing_capability`."""
    tag = f"{os.getpid() % 100000}"
    names, veths, subnet = [f"cvn{tag}a", f"cvn{tag}b"], [f"cva{tag}", f"cvb{tag}"], f"10.231.{os.getpid() % 250}"
    commands = [["ip", "netns", "add", names[0]], ["ip", "netns", "add", names[1]],
                ["ip", "link", "add", veths[0], "type", "veth", "peer", "name", veths[1]]]
    for name, veth, host in zip(names, veths, (1, 2)):
        commands += [["ip", "link", "set", veth, "netns", name],
                     ["ip", "-n", name, "addr", "add", f"{subnet}.{host}/24", "dev", veth],
                     ["ip", "-n", name, "link", "set", "lo", "up"], ["ip", "-n", name, "link", "set", veth, "up"]]
    try:
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                missing_capability(f"network namespaces (root): {' '.join(command)}: {done.stderr.strip()}")
        yield list(zip(names, (f"{subnet}.1", f"{subnet}.2")))
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_two_nodes_train_together(sample_dataset, tmp_path, two_hosts):
    """NNODES=2, one process per node, MASTER_ADDR node 0's address: one run, same weights on both nodes, one set
    of checkpoints and metrics, and the evaluation covers the whole val split across the nodes."""
    (ns0, master), (ns1, _) = two_hosts
    args = quick_args(sample_dataset, tmp_path / "out", "--train-subset", "4", "--val-subset", "3", "--batch-size",
                      "1", "--epochs", "1")
    common = ["NNODES=2", f"MASTER_ADDR={master}", "MASTER_PORT=29531", "NPROC_PER_NODE=1"]
    digests = tmp_path / "digests"  # each node's rank writes the digests of its weights there
    digests.mkdir()

    def node(namespace, rank):
        return subprocess.Popen(["ip", "netns", "exec", namespace, "env", *common, f"NODE_RANK={rank}", "bash",
                                 TRAIN_SH, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=rank_weights_env(digests))

    nodes = [node(ns0, 0), node(ns1, 1)]
    outputs = [n.communicate(timeout=900) for n in nodes]
    for n, (out, err) in zip(nodes, outputs):
        assert n.returncode == 0, out[-3000:] + err[-3000:]
    out0, out1 = outputs[0][0], outputs[1][0]
    assert "2 process(es) x 1 images" in out0 and "weights identical on all 2 ranks (71 tensors compared)" in out0
    assert "COCO bbox evaluation: 3 images" in out0  # 2 on node 0, 1 (+ a padding repeat) on node 1
    assert out1.strip() == ""  # rank 1 prints nothing of its own
    assert sorted(os.listdir(tmp_path / "out")) == [".lock", "args.json", "checkpoint_epoch0000", "checkpoints.json",
                                                    "detections_epoch0000.json", "detections_epoch0000_confusion.png",
                                                    "detections_epoch0000_pr.png", "detections_epoch0000_report.json",
                                                    "metrics.jsonl", "training.png"]
    records = read_metrics(tmp_path / "out" / "metrics.jsonl")
    # 4 images over 2 nodes, 1 per step: 2 iterations, then one evaluation.
    assert [(r["type"], r.get("iter")) for r in records] == [("train", 1), ("train", 2), ("eval", None)]
    # The weights themselves: the same on both nodes, and what the checkpoint holds.
    saved = {name: hashlib.sha256(t.numpy().tobytes()).hexdigest()
             for name, t in ckpt.load(tmp_path / "out" / "checkpoint_epoch0000")["model"].items()}
    node0, node1 = rank_weight_digests(digests)
    assert len(saved) == 71 and node0 == node1 == saved


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests = []

    def do_GET(self):
        CountingHandler.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


def test_the_recipe_starts_from_the_imagenet_backbone_downloaded_once(sample_dataset, tmp_path):
    """train.sh --data-path DIR starts, as the recipe says, from the zoo's ImageNet VGG16 (here flowvision's own
    vgg16().features, in the zoo's tarball layout, served over HTTP): one process downloads it once while the other
    waits, both load it, and the first VGG stage stays frozen at those weights while the rest trains."""
    from flowvision.models import vgg16

    flow.manual_seed(3)
    served = vgg16(pretrained=False).features.state_dict()
    zoo = tmp_path / "zoo"
    flow.save(served, str(zoo / "vgg16_amdegroot"))
    with tarfile.open(zoo / "vgg16_amdegroot.tar.gz", "w:gz") as tar:
        tar.add(zoo / "vgg16_amdegroot", arcname="vgg16_amdegroot")
    digest = hashlib.sha256((zoo / "vgg16_amdegroot.tar.gz").read_bytes()).hexdigest()
    (zoo / "vgg16_amdegroot.tar.gz.sha256").write_text(f"{digest}  vgg16_amdegroot.tar.gz\n")
    CountingHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CountingHandler, directory=str(zoo)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/vgg16_amdegroot.tar.gz"
    env = dict(os.environ, SSD300_VGG16_BACKBONE_URL=url, FLOWVISION_CACHE=str(tmp_path / "cache"),
               NPROC_PER_NODE="2", MASTER_PORT=str(free_port()))
    args = [a for a in quick_args(sample_dataset, tmp_path / "out", "--train-subset", "2", "--val-subset", "1",
                                  "--batch-size", "1", "--epochs", "1", "--eval-every", "9", "--lr", "1",
                                  "--warmup-iters", "0") if a != "--no-pretrained-backbone"]
    try:
        res = run(["bash", TRAIN_SH, *args], tmp_path, env=env)
    finally:
        server.shutdown()
    assert CountingHandler.requests == ["/vgg16_amdegroot.tar.gz.sha256", "/vgg16_amdegroot.tar.gz"]
    assert f"downloaded {url}" in res.stdout and "(checksum verified)" in res.stdout
    trained = ckpt.load(tmp_path / "out" / "checkpoint_epoch0000")["model"]
    last_feature = 22  # VGG16's layers up to conv4_3's ReLU are backbone.features, the rest extra.0 (model.py)

    def ours(key):
        index, param = key.split(".")
        index = int(index)
        return f"backbone.features.{key}" if index <= last_feature else f"backbone.extra.0.{index - 23}.{param}"

    for key, value in served.items():
        frozen = int(key.split(".")[0]) < 4  # conv1_1 (0) and conv1_2 (2): the first stage
        same = np.array_equal(trained[ours(key)].numpy(), value.numpy())
        assert same == frozen, f"{key} -> {ours(key)}: {'unchanged' if same else 'changed'}"
