"""Process set-up that must happen before ``oneflow`` is imported.

Two things about the ``oneflow==0.9.0`` wheel (the only one on PyPI) need care on the machines we run on:

* It is a CUDA 11.7 build that links cuBLAS 11 and cuDNN 8 even when no GPU is used. The NVIDIA pip wheels
  (``nvidia-cublas-cu11``, ``nvidia-cudnn-cu11``) ship them; the oneflow binary finds them through its RPATH only
  when both are installed into the same ``site-packages``. When they are elsewhere on ``sys.path`` (a user-site
  install, a layered environment) we preload them with ``ctypes`` so the dynamic linker finds them by soname.
* Its bundled OpenBLAS detects recent CPUs it does not know as the generic "Prescott" core and then runs SSE3
  kernels. We set ``OPENBLAS_CORETYPE`` (read once, when the library is loaded) to the best core type the CPU
  supports: an AVX2 core type on a CPU without AVX2 would crash with an illegal instruction, so the choice is
  made from the CPU's flags. A value the user has set is always kept. ``scripts/benchmark.py`` shows the effect.

Both happen when ``cv`` is imported (its ``__init__`` calls :func:`install`), so a program imports ``cv`` (or anything
from it) before ``oneflow``, as ours do. In the environment ``scripts/setup.sh`` makes, the order does not matter:
it adds :data:`STARTUP_HOOK` to the venv, which imports ``cv`` when the interpreter starts (see
:func:`write_startup_hook`). Elsewhere (another environment, or ``flow.hub.load``, which needs oneflow first), a
program that imports ``oneflow`` first is told once what it costs and what to do.
Only the standard library is imported here: it runs before oneflow, in DataLoader workers too.
"""
import ctypes
import glob
import importlib.abc
import importlib.util
import os
import sys
import warnings

# In dependency order: each library's own needs are loaded before it.
CUDA_LIBRARIES = (
    ("cublas", "libcublasLt.so.11"),
    ("cublas", "libcublas.so.11"),
    ("cudnn", "libcudnn_ops_infer.so.8"),
    ("cudnn", "libcudnn_ops_train.so.8"),
    ("cudnn", "libcudnn_cnn_infer.so.8"),
    ("cudnn", "libcudnn_cnn_train.so.8"),
)


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The instruction-set flags of the first CPU in ``cpuinfo`` (empty where that file does not exist)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def openblas_coretype(flags):
    """The OpenBLAS core type to force for a CPU with these flags, or None to leave OpenBLAS's own choice.

    AVX2 with FMA is the Haswell instruction set, so Haswell is safe wherever those two flags are present; on the
    AVX-512 CPUs we measured, the AVX-512 kernels were no faster (docs/performance.md; ``benchmark.py --sections
    coretype`` measures the machine at hand).
    """
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    if "avx" in flags:
        return "Sandybridge"
    return None


def _cuda_library_paths():
    """Where the NVIDIA wheels' libraries are, if oneflow's RPATH would not find them; else an empty list."""
    spec = importlib.util.find_spec("oneflow")
    if spec is None or not spec.submodule_search_locations:
        return []
    site = os.path.dirname(list(spec.submodule_search_locations)[0])
    if all(os.path.exists(os.path.join(site, "nvidia", pkg, "lib", lib)) for pkg, lib in CUDA_LIBRARIES):
        return []  # oneflow's RPATH ($ORIGIN/../nvidia/*/lib) resolves them
    return find_cuda_libraries(sys.path)


def find_cuda_libraries(search_path):
    """Full paths of :data:`CUDA_LIBRARIES` under ``<entry>/nvidia/<pkg>/lib`` for the entries of ``search_path``,
    in load order; libraries found nowhere are left out (oneflow's import then names the missing one)."""
    found = []
    for pkg, lib in CUDA_LIBRARIES:
        for entry in search_path:
            hits = glob.glob(os.path.join(entry or ".", "nvidia", pkg, "lib", lib))
            if hits:
                found.append(hits[0])
                break
    return found


def prepare_oneflow():
    """Set the OpenBLAS core type and make the CUDA libraries loadable. Idempotent; call before importing oneflow."""
    if "OPENBLAS_CORETYPE" not in os.environ:
        coretype = openblas_coretype(cpu_flags())
        if coretype:
            os.environ["OPENBLAS_CORETYPE"] = coretype
    for path in _cuda_library_paths():
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


class _BeforeOneFlow(importlib.abc.MetaPathFinder):
    """Runs :func:`prepare_oneflow` when ``oneflow`` is first imported; finds nothing itself."""

    def find_spec(self, name, path=None, target=None):
        if name == "oneflow":
            uninstall()
            prepare_oneflow()
        return None


def install():
    """Arrange for :func:`prepare_oneflow` to run just before oneflow is first imported. Too late once oneflow is
    imported (its libraries are loaded by then): then say what that costs, once, if it costs anything."""
    if "oneflow" in sys.modules:
        coretype = openblas_coretype(cpu_flags())
        if coretype and "OPENBLAS_CORETYPE" not in os.environ:
            warnings.warn(f"oneflow was imported before cv, so OpenBLAS runs its generic kernels on this CPU (SSD300 "
                          f"much slower); import cv first, or set OPENBLAS_CORETYPE={coretype}", stacklevel=3)
        return
    if not any(isinstance(f, _BeforeOneFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeOneFlow())


def uninstall():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _BeforeOneFlow)]


# A .pth file in site-packages whose line starts with "import" is run by the interpreter at start-up (the site
# module). Ours imports cv, which only installs the hook above: nothing else is loaded, and nothing happens unless
# oneflow is imported later. Exceptions are swallowed: a checkout moved away must not break every Python start in
# the venv (importing cv then reports it).
STARTUP_HOOK = "cv_prepare_oneflow.pth"
STARTUP_LINE = 'import sys; exec("try:\\n    import cv\\nexcept Exception:\\n    pass")\n'


def write_startup_hook(site_dir):
    """Put :data:`STARTUP_HOOK` in ``site_dir`` (a venv's site-packages), so that every program run by that
    interpreter is prepared for oneflow whatever it imports first. Returns its path; rewritten only if it differs."""
    path = os.path.join(site_dir, STARTUP_HOOK)
    try:
        with open(path) as f:
            if f.read() == STARTUP_LINE:
                return path
    except OSError:
        pass
    with open(path + ".tmp", "w") as f:
        f.write(STARTUP_LINE)
    os.replace(path + ".tmp", path)
    return path
