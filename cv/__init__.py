"""OneFlow model zoo: computer-vision models.

Importing this package prepares the process for OneFlow (see :mod:`cv._runtime`). The virtual environment made by
``scripts/setup.sh`` also installs that preparation as an import hook, so it happens even when a program imports
``oneflow`` before anything from here.
"""
from cv import _runtime

_runtime.install()
