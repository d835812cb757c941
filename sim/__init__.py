"""Simulated Arduinos speaking PowMon's serial protocol, for tests, demos and CI.

`device` is the protocol engine, `pty` serves it on a pseudo-terminal (POSIX), `protocol_sim`
is the pyserial `sim://` URL handler (any OS) and `cli` is `powmon sim`. This package imports
nothing at load time: pyserial imports it to find `protocol_sim`, on Windows too.
"""
