"""OpenVINO backend for SSD300-VGG16 inference on CPU: float32, bfloat16 and int8.

OpenVINO reads the very ONNX files the ONNX Runtime backend runs (:func:`onnx_backend.cached_export`'s float32
network, and for int8 the QDQ network of :func:`quantize.cached_quantized_export`) and compiles them for the CPU
with ``openvino.Core().compile_model``. Pre- and post-processing stay the :class:`SSD` module's own
(:class:`~cv.detection.deploy.onnx_backend.ExportedNetworkSSD`), so only the network's arithmetic differs.

Precision is OpenVINO's ``INFERENCE_PRECISION_HINT``:

- ``float32``: asked for explicitly, because on CPUs with bfloat16 instructions (AVX-512 BF16, AMX) OpenVINO's
  default is bf16.
- ``bfloat16``: activations and weights in bfloat16 (8 significant bits), accumulation in float32, on CPUs whose
  ``OPTIMIZATION_CAPABILITIES`` list ``BF16``. Elsewhere OpenVINO would silently run float32; we run float32 and
  say so in one line.
- ``int8``: the QDQ network; OpenVINO's low-precision transformations run its quantized trunk in int8, and the parts
  left float32 (the L2 normalisation, the heads: see :mod:`quantize`) stay float32 (hint f32, not bf16).
"""
import sys

from cv.detection.deploy.onnx_backend import ExportedNetworkSSD
from cv.detection.utils.cli import UserError

VERSION = "2026.4.1"  # requirements.txt's pin; named in the message when OpenVINO is missing
# INFERENCE_PRECISION_HINT by precision; int8's float32 parts stay float32 (see the module docstring).
HINTS = {"float32": "f32", "bfloat16": "bf16", "int8": "f32"}


def require_openvino():
    """The ``openvino`` module, imported without its model-conversion API, or a one-line :class:`UserError` saying
    how to install it.

    ``import openvino`` also imports ``openvino.tools.ovc`` (``openvino.convert_model``), which sends a usage event to
    Google Analytics unless the user opted out, from a thread that forks a process to do it. Forked while OneFlow
    runs, the process can deadlock (seen in tests here), and an inference backend should not report its use. Only
    the runtime (``Core``) is needed: the conversion API is kept out of this import (``openvino.tools.ovc`` can still
    be imported explicitly afterwards)."""
    blocked = "openvino.tools.ovc" not in sys.modules
    if blocked:
        sys.modules["openvino.tools.ovc"] = None  # openvino/__init__.py skips it on ImportError
    try:
        import openvino
    except ImportError as e:
        raise UserError(f"the OpenVINO backend needs the openvino package ({e}): install it with "
                        f".venv/bin/python -m pip install openvino=={VERSION} (or the package's extra: "
                        "pip install -e '.[openvino]')") from None
    finally:
        if blocked:
            del sys.modules["openvino.tools.ovc"]
    return openvino


def supports_bfloat16(core):
    """Whether OpenVINO can run bfloat16 on this CPU (``BF16`` in its ``OPTIMIZATION_CAPABILITIES``)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def runnable_precision(core, precision, log=print):
    """``precision``, or ``"float32"`` for ``"bfloat16"`` on a CPU without it (after one ``log`` line saying so)."""
    if precision != "bfloat16":
        return precision
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in capabilities:
        return precision
    log(f"bfloat16: this CPU has no BF16 support (OpenVINO lists {', '.join(capabilities)}); running float32 instead")
    return "float32"


def read_onnx(core, path):
    """The ONNX file ``path`` as an OpenVINO model, with ONNX's order of equal values in ``TopK`` restored.

    ONNX's TopK lists equal values lower index first; OpenVINO's ONNX reader (2026.4.1) makes every TopK
    ``stable=False``, which lists them in any order. The end-to-end export relies on that order for equal scores
    (which default box NMS visits first, and the final ranking: :mod:`onnx_end_to_end`)."""
    model = core.read_model(path)
    for op in model.get_ordered_ops():
        if op.get_type_name() == "TopK":
            op.set_attribute("stable", True)
    return model


class OpenVinoSSD(ExportedNetworkSSD):
    """:class:`ExportedNetworkSSD` with the network compiled by OpenVINO for the CPU.

    Args:
        model, onnx_path: as :class:`ExportedNetworkSSD`; for ``int8`` the quantized file, otherwise the float32
            one (ValueError for the other).
        precision: ``"float32"``, ``"bfloat16"`` or ``"int8"``; :attr:`precision` is what runs (float32 for
            bfloat16 on a CPU without it, see :func:`runnable_precision`).
        threads: OpenVINO's inference threads (default: its own choice).
        log: where the one-line bfloat16 fallback message goes.
    """

    def __init__(self, model, onnx_path, precision="float32", threads=None, log=print):
        super().__init__(model, onnx_path)
        if precision not in HINTS:
            raise ValueError(f"precision {precision!r}: expected one of {', '.join(HINTS)}")
        exported = self.info.get("precision", "float32")
        if (exported == "int8") != (precision == "int8"):
            raise ValueError(f"{onnx_path} is the {exported} network, not one for precision {precision}")
        core = require_openvino().Core()
        self.precision = runnable_precision(core, precision, log)
        config = {"INFERENCE_PRECISION_HINT": HINTS[self.precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(read_onnx(core, onnx_path), "CPU", config)
        self.request = compiled.create_infer_request()
        self.outputs = compiled.outputs  # (cls_logits, bbox_regression), as exported

    def run_batch(self, x):
        result = self.request.infer({0: x})
        return result[self.outputs[0]], result[self.outputs[1]]
