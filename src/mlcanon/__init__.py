"""mlcanon: the canon of modern machine learning, end to end, on PyTorch."""

__version__ = "0.1.0"

from mlcanon.errors import UserError

__all__ = ["UserError", "__version__", "load_run"]


def __getattr__(name: str):
    if name == "load_run":   # lazy: `import mlcanon` stays light; load_run needs torch and the registry
        from mlcanon.registry import load_run
        return load_run
    raise AttributeError(f"module 'mlcanon' has no attribute {name!r}")
