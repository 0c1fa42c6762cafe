"""mlcanon: the canon of modern machine learning, end to end, on PyTorch."""

__version__ = "0.1.0"

import os


def _openmp_wait() -> None:
    """How torch's OpenMP threads wait for work between parallel regions (read once, when torch loads libgomp;
    ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` set by the user wins). Measured on the 2-core machine (issue 15):
    - another busy process: spinning threads fight it for the cores; with libgomp's default spin a 2-thread CNN step
      took 3-6x the wall time of a 1-thread step, and with 10,000 spins 1.9x that of sleeping at once (PASSIVE);
    - an idle machine: sleeping at once costs a futex wake-up per parallel region; 10,000 spins (microseconds)
      before sleeping made 400 MNIST CNN steps 1.3x faster than PASSIVE.
    So: spin briefly when no other task is runnable as this process starts (/proc/loadavg), else sleep at once."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    try:
        with open("/proc/loadavg") as f:               # "0.52 0.61 0.70 1/345 6789": runnable now / all tasks
            runnable = int(f.read().split()[3].split("/")[0])   # this process included
    except (OSError, ValueError, IndexError):           # not Linux
        runnable = 2
    if runnable <= 1:
        os.environ["GOMP_SPINCOUNT"] = "10000"
    else:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


_openmp_wait()

from mlcanon.errors import UserError

__all__ = ["UserError", "__version__", "load_run"]


def __getattr__(name: str):
    if name == "load_run":   # lazy: `import mlcanon` stays light; load_run needs torch and the registry
        from mlcanon.registry import load_run
        return load_run
    raise AttributeError(f"module 'mlcanon' has no attribute {name!r}")
