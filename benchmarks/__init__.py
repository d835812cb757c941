"""PowMon benchmarks: `python -m benchmarks` (the code is in powmon.bench; see README.md)."""
