"""For device runs only (``bench/infra/device_lego.sh`` puts this folder on PYTHONPATH): gsplat's CUDA extension
built on an earlier machine, so a fresh machine skips gsplat's JIT build (80-100 s each time).

gsplat first tries ``from gsplat import csrc`` and builds only when that fails. When ``GSPLAT_PREBUILT`` names
a ``gsplat_cuda.so`` (the JIT build's output), this registers it under that name. An extension that does not
load here (another torch or CUDA) raises ImportError, and gsplat builds as usual. Without the variable,
nothing happens.
"""

import importlib.abc
import importlib.util
import os
import sys


class _PrebuiltLoader(importlib.abc.Loader):
    def __init__(self, path: str) -> None:
        self.path = path

    def create_module(self, spec):
        import torch  # noqa: F401  (the extension links against torch's libraries)

        real = importlib.util.spec_from_file_location("gsplat_cuda", self.path)  # its init function's name
        module = importlib.util.module_from_spec(real)
        real.loader.exec_module(module)
        return module

    def exec_module(self, module) -> None:
        pass


class _PrebuiltFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        prebuilt = os.environ.get("GSPLAT_PREBUILT", "")
        if fullname != "gsplat.csrc" or not os.path.isfile(prebuilt):
            return None
        return importlib.util.spec_from_loader(fullname, _PrebuiltLoader(prebuilt))


if os.environ.get("GSPLAT_PREBUILT"):
    sys.meta_path.append(_PrebuiltFinder())
