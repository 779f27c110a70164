"""goldsmith: reviewed code in, proven machine images out."""

__version__ = "0.1.0"
