"""Exercise checks, one module per lesson (``lessonNN.py``). Importing this package
imports every lesson module, which registers its checks."""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("lesson")):
    importlib.import_module(f"{__name__}.{_module}")
