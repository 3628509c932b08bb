"""Row-wise unit length for numpy embedding matrices: the one copy every module calls."""

from __future__ import annotations

from typing import Any

import numpy as np

# A zero row stays zero instead of becoming NaN.
_MIN_NORM = 1e-12


def unit_rows(x: Any, dtype: Any = None) -> np.ndarray:
    """``x`` ``[N, D]`` with every row scaled to unit L2 norm (cast to ``dtype`` first if given)."""
    x = np.asarray(x, dtype=dtype)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _MIN_NORM)
