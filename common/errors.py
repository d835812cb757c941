"""One place for PowMon's exception types, so callers can catch by meaning, not by module."""

from __future__ import annotations


class PowmonError(Exception):
    """Base of every error PowMon raises on purpose; anything else is a bug."""


class SettingsError(PowmonError):
    """Raised by the settings loader: the file, the key, what was expected and what was found.

    Entry points turn it into one line on stderr and exit code 2.
    """


class SchemaError(PowmonError):
    """Raised by the message decoder for frames that are not a valid PowMon message.

    Receivers count and drop such messages; they never crash on them.
    """


class DeviceError(PowmonError):
    """Raised by readers when a serial device cannot be opened or stops answering."""


class UplinkError(PowmonError):
    """Raised by the uplink for failures talking to the remote server or its spool."""


class InUseError(PowmonError):
    """Raised at start-up when what a process must own is held by another one: a data root or
    spool locked by a running instance, a bus endpoint already bound.

    Like bad settings this is a misconfiguration, not a crash: one line on stderr and exit
    code 2, which a supervisor never retries in a loop.
    """
