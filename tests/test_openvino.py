"""The OpenVINO backend (:mod:`cv.detection.deploy.openvino_backend`, ``infer.sh --backend openvino``): which settings
run where, the message when OpenVINO is missing, the bfloat16 fallback, and the tiny SSD's exported network giving
ONNX Runtime's detections. Detections of SSD300-VGG16 with fitted heads: ``test_int8.py``; the end-to-end file in
OpenVINO: ``test_onnx_end_to_end.py``."""
import sys

import numpy as np
import oneflow as flow
import pytest

from test_onnx_end_to_end import spread_tiny

CPU, CUDA = flow.device("cpu"), flow.device("cuda")


@pytest.mark.parametrize("backend,precision,device,expected", [
    ("auto", "float32", CPU, "onnxruntime"),
    ("auto", "int8", CPU, "onnxruntime"),
    ("auto", "bfloat16", CPU, "openvino"),
    ("openvino", "float32", CPU, "openvino"),
    ("openvino", "int8", CPU, "openvino"),
    ("openvino", "bfloat16", CPU, "openvino"),
    ("oneflow", "bfloat16", CPU, "--precision bfloat16 runs on OpenVINO: use --backend openvino (or leave --backend "
                                 "out)"),
    ("onnxruntime", "bfloat16", CPU, "--precision bfloat16 runs on OpenVINO: use --backend openvino (or leave "
                                     "--backend out)"),
    ("oneflow", "int8", CPU, "--precision int8 runs on ONNX Runtime or OpenVINO: use --backend onnxruntime or "
                             "openvino (or leave --backend out)"),
    ("openvino", "float32", CUDA, "--backend openvino runs on the CPU; drop --device or use --backend oneflow"),
    ("auto", "bfloat16", CUDA, "--backend openvino runs on the CPU; drop --device"),
])
def test_which_backend_runs_which_precision(backend, precision, device, expected):
    from cv.detection.ssd300_vgg16.detector import choose_backend

    if expected.startswith("--"):
        with pytest.raises(ValueError) as e:
            choose_backend(backend, precision, device, prefix="--")
        assert str(e.value) == expected
    else:
        assert choose_backend(backend, precision, device, prefix="--") == expected


def test_missing_openvino_is_one_line_naming_the_pin(monkeypatch, tmp_path, capsys):
    """Without the openvino package, --backend openvino (or bfloat16, which only it runs) ends with one line saying
    what to install, before any weights are read; Detector.load raises the same error."""
    from cv.detection.ssd300_vgg16 import infer
    from cv.detection.ssd300_vgg16.detector import Detector
    from cv.detection.utils import cli

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    for flags in (["--backend", "openvino"], ["--precision", "bfloat16"]):
        with pytest.raises(SystemExit) as e:
            cli.run(infer.main, infer.get_args_parser(), ["--weights", str(tmp_path / "missing"), *flags])
        assert e.value.code == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and "missing" not in err
        assert err.startswith("error: the OpenVINO backend needs the openvino package")
        assert err.rstrip().endswith("install it with .venv/bin/python -m pip install openvino==2026.4.1 (or the "
                                     "package's extra: pip install -e '.[openvino]')")
    with pytest.raises(cli.UserError, match=r"pip install openvino==2026\.4\.1"):
        Detector.load(str(tmp_path / "missing"), backend="openvino")


def test_openvino_is_imported_without_its_usage_reporting():
    """The backend's ``import openvino`` leaves out the model-conversion API, whose import sends a usage event from a
    forked process (which deadlocked processes running OneFlow here); nothing in this test session imports it."""
    from cv.detection.deploy.openvino_backend import require_openvino

    assert require_openvino().Core
    assert "openvino.tools.ovc" not in sys.modules and "openvino_telemetry" not in sys.modules


class CapabilitiesOf:
    """A stand-in for ``openvino.Core`` that lists ``capabilities`` as the CPU's."""

    def __init__(self, capabilities):
        self.capabilities = capabilities

    def get_property(self, device, name):
        assert (device, name) == ("CPU", "OPTIMIZATION_CAPABILITIES")
        return self.capabilities


def test_bfloat16_runs_where_the_cpu_has_it_and_float32_with_a_line_elsewhere():
    from cv.detection.deploy.openvino_backend import runnable_precision

    said = []
    assert runnable_precision(CapabilitiesOf(["FP32", "BF16", "INT8"]), "bfloat16", said.append) == "bfloat16"
    assert said == []
    assert runnable_precision(CapabilitiesOf(["FP32", "INT8", "BIN"]), "bfloat16", said.append) == "float32"
    assert said == ["bfloat16: this CPU has no BF16 support (OpenVINO lists FP32, INT8, BIN); running float32 instead"]
    for precision in ("float32", "int8"):
        assert runnable_precision(CapabilitiesOf(["FP32"]), precision, said.append) == precision
    assert len(said) == 1


def test_the_tiny_ssds_network_gives_onnxruntimes_detections(tmp_path):
    """The same exported file run by OpenVINO (float32) and ONNX Runtime: five images of two sizes, batch 2 (so one
    padded chunk): the same labels in the same order, boxes within 1e-3 px, scores within 1e-5 (the tiny SSD with
    its scores spread out, so that rounding does not reorder near-equal ones). bfloat16 runs as this CPU allows; a
    float32 network is refused for int8."""
    from cv.detection.deploy.onnx_backend import OnnxRuntimeSSD, cached_export
    from cv.detection.deploy.openvino_backend import OpenVinoSSD, require_openvino, supports_bfloat16

    model = spread_tiny()
    path = cached_export(model, str(tmp_path), batch_size=2)
    rng = np.random.default_rng(0)
    images = [flow.tensor(rng.random((3, h, w), np.float32)) for h, w in ((50, 90),) * 3 + ((130, 97),) * 2]
    expected = OnnxRuntimeSSD(model, path)(images)
    got = OpenVinoSSD(model, path, "float32")(images)
    for e, g in zip(expected, got, strict=True):
        assert len(e["labels"]) > 0 and g["labels"].numpy().tolist() == e["labels"].numpy().tolist()
        np.testing.assert_allclose(g["boxes"].numpy(), e["boxes"].numpy(), atol=1e-3)
        np.testing.assert_allclose(g["scores"].numpy(), e["scores"].numpy(), atol=1e-5)

    said = []
    bf16 = OpenVinoSSD(model, path, "bfloat16", log=said.append)
    has_bf16 = supports_bfloat16(require_openvino().Core())
    assert bf16.precision == ("bfloat16" if has_bf16 else "float32") and len(said) == (0 if has_bf16 else 1)
    with pytest.raises(ValueError, match="is the float32 network, not one for precision int8"):
        OpenVinoSSD(model, path, "int8")
