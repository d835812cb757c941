"""`python -m benchmarks` from the repository root: the same as `powmon bench`."""

from __future__ import annotations

from powmon.bench.cli import bench_command

if __name__ == "__main__":
    bench_command(prog_name="python -m benchmarks")
