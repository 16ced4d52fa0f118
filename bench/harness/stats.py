"""Summaries of repeated samples: median with min-max, and ratios of medians.

Why medians: the machine is shared and noisy; a median of alternated runs resists the odd slow
sample, and min-max shows the spread honestly instead of hiding it in a mean +- stdev.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

DASH = "\u2013"
"""En dash between the ends of a range, as in 12 (10\u201315)."""


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Ratio of medians (nan when either side has no samples or the denominator is zero)."""
    num, den = median(numerator), median(denominator)
    if not numerator or not denominator or den == 0:
        return float("nan")
    return num / den


def fmt_seconds(samples: Sequence[float]) -> str:
    """'0.123 s (0.110-0.140)' in milliseconds when small, for the report tables."""
    if not samples:
        return "n/a"
    med, lo, hi = median(samples), min(samples), max(samples)
    if hi < 1.0:
        return f"{med * 1000:.0f} ms ({lo * 1000:.0f}{DASH}{hi * 1000:.0f})"
    return f"{med:.2f} s ({lo:.2f}{DASH}{hi:.2f})"


def fmt_number(samples: Sequence[float], unit: str = "", digits: int = 0) -> str:
    if not samples:
        return "n/a"
    med, lo, hi = median(samples), min(samples), max(samples)
    return f"{med:,.{digits}f}{unit} ({lo:,.{digits}f}{DASH}{hi:,.{digits}f})"
