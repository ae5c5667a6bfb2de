"""Loading the repository's scripts (experiment drivers, download scripts), which are files, not packages."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relpath: str | Path, name: str, *, reuse: bool = False) -> ModuleType:
    """Execute ``ROOT / relpath`` as a fresh module called ``name``, registered in ``sys.modules`` (dataclasses
    and pickling look a module up there). ``reuse=True`` returns the module already registered under ``name``
    (drivers that share a helper module through ``sys.modules`` must see the tests' copy)."""
    if reuse and name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
