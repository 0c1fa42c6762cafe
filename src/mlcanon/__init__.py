"""mlcanon: the canon of modern machine learning, end to end, on PyTorch."""

__version__ = "0.1.0"

from mlcanon.errors import UserError

__all__ = ["UserError", "__version__"]
