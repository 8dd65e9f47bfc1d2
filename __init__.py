"""wdist: weight-distribution and sparsity analysis of checkpoint files."""

__version__ = "0.1.0"
