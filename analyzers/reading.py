"""The plain-language reading. The verdict and the notes rendered from it live in `verdict.py`; this
module keeps the names older callers import.

Reference points (excess kurtosis, Gini of |w|): uniform -1.2 / 0.333 (PyTorch's default init),
normal 0 / 0.414, Laplace 3 / 0.5. A normal sample's top 1% of |w| holds about 8.5% of sum w^2."""

from __future__ import annotations

from wdist.analyzers.verdict import SHAPE_MIN, ModelReading, Reading, classify, notes, summary_paragraph

__all__ = ["SHAPE_MIN", "ModelReading", "Reading", "classify", "notes", "summary_paragraph"]
