"""Contracts shared by every PowMon process: settings, wire schema, conversion, transport.

Nothing here imports a process package (readers, writer, uplink): they depend on us, never the
other way round, so that any one of them can run alone.
"""
