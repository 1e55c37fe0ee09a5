"""How probabilities and thresholds are written, and how labels are decided from exactly what is written.

Both are float32. Each is written as the shortest decimal that reads back as the same float32 (at most 9 significant
digits: ``0.3``, ``2.7e-38``), as a JSON number or CSV field. A reader may parse it as float32 (the exact value) or as
float64 (a value strictly inside that float32's rounding interval), and compares the same way either way: two written
numbers are equal only when their float32 values are, and otherwise ordered as those are. Labels are
``written probability >= written threshold``, so every file that holds a probability, a threshold and labels agrees
with itself and with every other file.
"""

from __future__ import annotations

import numpy as np

#: How far (float64 ulps) a written value must stay inside its float32's rounding interval: a reader whose decimal
#: parser is off by an ulp (pandas 2's default C parser is not correctly rounded) still reads the same float32.
MARGIN_ULPS = 2


def _shortest(values: np.ndarray) -> np.ndarray:
    """float64 parse of the shortest decimal that round-trips each float32 (numpy's Dragon4, ``unique=True``)."""
    return np.array([float(str(v)) for v in values], dtype=np.float64)


def written(values) -> np.ndarray:
    """float64 array, the shape of ``values`` (rounded to float32 first): the value a reader gets from what is written
    for each number; ``json.dumps`` and ``DataFrame.to_csv`` write these floats as exactly that decimal. NaN stays NaN.
    Where the shortest decimal would sit within MARGIN_ULPS of the float32's rounding boundary (not seen in 3 million
    random float32s, but not excluded), the float32's exact value is written instead (up to 17 digits)."""
    x = np.asarray(values, dtype=np.float32)
    unique, inverse = np.unique(x.ravel(), return_inverse=True)  # probabilities repeat (saturated, tied)
    text, exact = _shortest(unique), unique.astype(np.float64)
    up = np.nextafter(unique, np.float32(np.inf)).astype(np.float64)
    down = np.nextafter(unique, np.float32(-np.inf)).astype(np.float64)
    low, high = text.copy(), text.copy()
    for _ in range(MARGIN_ULPS):
        low, high = np.nextafter(low, -np.inf), np.nextafter(high, np.inf)
    with np.errstate(invalid="ignore"):  # inf +- inf at float32's ends: no boundary there
        inside = (low > (exact + down) / 2) & (high < (exact + up) / 2)
    safe = inside | ~np.isfinite(unique) | np.isinf(up) | np.isinf(down)
    return np.where(safe, text, exact)[inverse].reshape(x.shape)


def decide(probs, thresholds) -> np.ndarray:
    """Labels (bool, N x C): written probability >= written threshold (one number or one per class). NaN: no label."""
    return written(probs) >= written(thresholds)


def as_threshold(value: float) -> float:
    """A threshold as it is kept and written: its float32 value, read back as a float (JSON, checkpoints, metrics)."""
    return float(written(value))
