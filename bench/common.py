"""Small helpers shared by the workloads added after echo/acquire/contended:
number formatting for values that span orders of magnitude, and the
throughput metrics of one measured phase."""

from __future__ import annotations

from collections.abc import Callable

from bench.loops import Sample
from bench.workloads import Metrics, Stat

__all__ = ["fmt_num", "fmt_ratio", "phase_metrics", "stat_fmt"]


def fmt_num(x: float) -> str:
    """Three significant digits at most, no exponent for the usual ranges:
    12345 -> "12345", 123.4 -> "123", 12.34 -> "12.3", 1.234 -> "1.23",
    0.01234 -> "0.0123"."""
    a = abs(x)
    if a >= 100 or x == 0:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    if a >= 0.001:
        return f"{x:.3g}"
    return f"{x:.2e}"


def fmt_ratio(x: float) -> str:
    """Two decimals, or two significant digits under 0.1 (0.0031)."""
    return f"{x:.2f}" if abs(x) >= 0.1 or x == 0 else f"{x:.2g}"


def stat_fmt(stat: Stat | None, fmt: Callable[[float], str] = fmt_num, scale: float = 1.0) -> str:
    """``median [min-max]`` with ``fmt`` (``median`` alone for one repeat)."""
    if stat is None:
        return "-"
    med = fmt(stat.median * scale)
    if stat.n < 2:
        return med
    return f"{med} [{fmt(stat.min * scale)}-{fmt(stat.max * scale)}]"


def phase_metrics(sample: Sample) -> Metrics:
    """Throughput and client CPU of one measured phase of C tasks."""
    if sample.n == 0:
        raise RuntimeError(f"no operation completed in the {sample.wall:.2f} s measured")
    return {
        "rps": sample.n / sample.wall,
        "cpu_us": sample.cpu / sample.n * 1e6,  # client CPU per request
        "cpu_share": sample.cpu / sample.wall,  # of the client's core
        "requests": float(sample.n),
        "seconds": sample.wall,
    }
