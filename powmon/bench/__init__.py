"""`powmon bench` / `python -m benchmarks`: PowMon's speed against the physical limits.

The code lives in the package (not only in the repository's benchmarks/ folder) so that
`powmon bench` works from an installed PowMon too.
"""

from __future__ import annotations

from powmon.bench.cli import bench_command

__all__ = ["bench_command"]
