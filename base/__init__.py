"""The shared layer: what several processes and tools use, above the contracts of `common/`.

The process table, health (heartbeats to up/down/stale), the storage format (CSV columns, rows,
file names) and energy integration live here once, so that the web page, the uplink, the
supervisor and the offline tools import them without importing each other (docs/architecture.md).
"""
