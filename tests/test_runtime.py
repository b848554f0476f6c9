"""The environment contract: from the venv's python, in any directory, our package and oneflow import without the
user exporting anything, and, when ``cv`` comes first, OpenBLAS runs a core type chosen for this CPU."""
import os
import subprocess
import sys

import pytest

from cv import _runtime
from tests.conftest import fresh_python, missing_capability


def run_python(code, **env_changes):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("flags,expected", [
    ({"sse3", "avx", "avx2", "fma", "avx512f"}, "Haswell"),
    ({"sse3", "avx", "avx2", "fma"}, "Haswell"),
    ({"sse3", "avx", "avx2"}, "Sandybridge"),  # AVX2 without FMA is not Haswell's instruction set
    ({"sse3", "avx"}, "Sandybridge"),
    ({"sse3", "ssse3"}, None),
    (set(), None),
])
def test_openblas_coretype_never_exceeds_the_cpu(flags, expected):
    assert _runtime.openblas_coretype(flags) == expected


def test_cpu_flags_reads_the_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse3 avx2 fma\n\nprocessor\t: 1\n")
    assert _runtime.cpu_flags(str(cpuinfo)) == {"fpu", "sse3", "avx2", "fma"}
    assert _runtime.cpu_flags(str(tmp_path / "missing")) == set()


def test_find_cuda_libraries_in_load_order(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for pkg, lib in _runtime.CUDA_LIBRARIES:
        root = second if pkg == "cudnn" else first
        (root / "nvidia" / pkg / "lib").mkdir(parents=True, exist_ok=True)
        (root / "nvidia" / pkg / "lib" / lib).write_bytes(b"")
    found = _runtime.find_cuda_libraries([str(tmp_path / "empty"), str(first), str(second)])
    assert [os.path.basename(p) for p in found] == [lib for _, lib in _runtime.CUDA_LIBRARIES]
    assert found[0].startswith(str(first)) and found[-1].startswith(str(second))


def test_our_package_prepares_oneflow_from_any_directory():
    expected = _runtime.openblas_coretype(_runtime.cpu_flags()) or "unset"
    got = run_python("import os, cv.detection.ssd300_vgg16, oneflow; "
                     "print(os.environ.get('OPENBLAS_CORETYPE', 'unset'))")
    assert got == expected


def test_importing_oneflow_first_is_told_what_it_costs():
    coretype = _runtime.openblas_coretype(_runtime.cpu_flags())
    if coretype is None:
        missing_capability("a CPU with AVX (without it OpenBLAS's own choice is kept: there is nothing to warn about)")
    _, err = fresh_python("import oneflow, cv", cwd="/")  # an environment without setup.sh's start-up hook
    assert err.count("UserWarning") == 1 and f"import cv first, or set OPENBLAS_CORETYPE={coretype}" in err


def test_the_startup_hook_prepares_oneflow_imported_first(tmp_path):
    """setup.sh's .pth file: with it, importing oneflow before cv still gets the chosen core type, and no warning."""
    path = _runtime.write_startup_hook(str(tmp_path))
    assert open(path).read() == _runtime.STARTUP_LINE and _runtime.write_startup_hook(str(tmp_path)) == path
    out, err = fresh_python("import os, oneflow, cv.detection.ssd300_vgg16; print(os.environ.get('OPENBLAS_CORETYPE', "
                            "'unset'))", cwd="/", startup_hook=tmp_path)
    assert out.split()[-1] == (_runtime.openblas_coretype(_runtime.cpu_flags()) or "unset")
    assert "UserWarning" not in err


def test_user_choice_of_coretype_is_kept():
    assert run_python("import os, cv, oneflow; print(os.environ['OPENBLAS_CORETYPE'])",
                      OPENBLAS_CORETYPE="Sandybridge") == "Sandybridge"


@pytest.mark.slow
def test_chosen_coretype_computes_what_the_generic_one_does():
    if _runtime.openblas_coretype(_runtime.cpu_flags()) is None:
        missing_capability("a CPU with AVX (without it OpenBLAS's own choice is kept: no other core type to compare)")
    code = "import cv; " + ( ("import numpy as np, oneflow as flow, oneflow.nn.functional as F; flow.manual_seed(0); "
            "x = flow.randn(1, 64, 40, 40); w = flow.randn(96, 64, 3, 3); "
            "print(repr(F.conv2d(x, w, padding=1).numpy().astype(np.float64).sum()) + ' ' + "
            "repr(float(flow.matmul(x.view(64, -1).t(), w.view(96, -1).t()[:64]).abs().sum())))"))
    chosen = [float(v) for v in run_python(code).split()]
    generic = [float(v) for v in run_python(code, OPENBLAS_CORETYPE="Prescott").split()]
    assert chosen == pytest.approx(generic, rel=1e-5)
    assert abs(chosen[0]) > 0


@pytest.mark.parametrize("env, outcome", [({}, "skip"), ({"CI": "true"}, "fail"), ({"SSD300_REQUIRE_ALL": "1"}, "fail"),
                                          ({"CI": "false"}, "skip")])
def test_a_missing_capability_fails_where_every_test_must_run(monkeypatch, env, outcome):
    """The one way a test gives up for want of root, a package or a CPU feature: a skip on a developer's
    machine, a failure naming what is missing in CI (which sets CI=true), so CI cannot pass by skipping."""
    from tests.conftest import import_or_missing

    for name in ("CI", "SSD300_REQUIRE_ALL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    expected = pytest.fail.Exception if outcome == "fail" else pytest.skip.Exception
    with pytest.raises(expected, match="missing capability: mounting a tmpfs"):
        missing_capability("mounting a tmpfs")
    with pytest.raises(expected, match="missing capability: the Python package no_such_module_here"):
        import_or_missing("no_such_module_here")
    assert import_or_missing("json").dumps([1]) == "[1]"
