"""mlcanon: the canon of modern machine learning, end to end, on PyTorch."""

__version__ = "0.1.0"

import os

# OpenMP threads that wait for work sleep instead of spinning (read once, when torch loads libgomp; a value the
# user set wins). Measured on the 2-core machine under load (issue 15): with the default spin-wait, a 2-thread
# CNN step took 3-6x the wall time and 4-7x the CPU time of a 1-thread step; passive, 2 threads match 1.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mlcanon.errors import UserError

__all__ = ["UserError", "__version__", "load_run"]


def __getattr__(name: str):
    if name == "load_run":   # lazy: `import mlcanon` stays light; load_run needs torch and the registry
        from mlcanon.registry import load_run
        return load_run
    raise AttributeError(f"module 'mlcanon' has no attribute {name!r}")
