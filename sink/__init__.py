"""The sink core: what every subscriber that stores readings (writer, uplink) does alike.

A sink imports `powmon.sink.api` only (tests/test_layers.py holds it to that); the other
modules are the core's own.
"""
