"""How far a reader's session was published, kept where a kill -9 cannot take it.

When a reader dies, `powmon run` tells the sinks how far its session got (schema.ReaderEnd), so
that a sink which was down meanwhile names the session's tail in gaps.csv instead of waiting
for it. The lifeline's beats say it only once per heartbeat: readings published after the last
beat, received by a sink that was up (the uplink) but not by one that was down (the writer),
were neither stored nor named (the 10-minute chaos soak found 64 of them).

So a reader started by `powmon run` also writes its session and next seq into a small file the
supervisor made (`POWMON_PUBLISH_MARK=<path>`), memory-mapped: before each publish, one copy of
64 bytes into the page cache, no system call and no wake-up of anyone, and the kernel keeps the
page whatever kills the process. The supervisor reads it once, when the reader has ended.
Written before the send, the mark may be ahead of what left the process (a kill between the
two): those readings are then named as lost, which they are. A copy torn by a kill fails its
CRC and the lifeline's last beat is used, as before.

Layout: CRC-32 of the rest (4 bytes), next seq (8), session length (1), session (ASCII, <= 51).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import struct
import zlib
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

ENV: Final = "POWMON_PUBLISH_MARK"
SIZE: Final = 64
_HEAD: Final = struct.Struct("<IQB")
_MAX_SESSION: Final = SIZE - _HEAD.size


def create(path: Path) -> None:
    """A blank mark for a reader about to start (no session yet: read() gives None).

    A new file put in place by rename, never the old one truncated: a reader of an earlier run
    that still maps the old file (it is stopping) must not fault on a page that is gone."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(bytes(SIZE))
    os.replace(tmp, path)


def read(path: Path) -> tuple[str, int] | None:
    """(session, next seq) as the reader last wrote it; None if it wrote none or the copy was
    torn."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < SIZE:
        return None
    crc, seq, n = _HEAD.unpack_from(data)
    if n == 0 or n > _MAX_SESSION or crc != zlib.crc32(data[4 : _HEAD.size + n]):
        return None
    return data[_HEAD.size : _HEAD.size + n].decode("ascii", errors="replace"), seq


class MarkWriter:
    """The reader's end: `write(session, next_seq)` before each publish."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)  # the mapping holds its own reference to the file
        self._buf = bytearray(SIZE)

    def write(self, session: str, next_seq: int) -> None:
        buf, raw = self._buf, session.encode("ascii", errors="replace")[:_MAX_SESSION]
        n = len(raw)
        buf[_HEAD.size : _HEAD.size + n] = raw
        struct.pack_into("<QB", buf, 4, next_seq, n)
        struct.pack_into("<I", buf, 0, zlib.crc32(memoryview(buf)[4 : _HEAD.size + n]))
        self._map[:SIZE] = buf  # one copy: torn only by a kill in its middle (CRC)

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self._map.close()


def attach(environ: dict[str, str] | None = None) -> MarkWriter | None:
    """The mark `powmon run` gave this reader, if any; None when started alone (or when the
    file cannot be mapped: then the lifeline's beats are all the supervisor has)."""
    value = (os.environ if environ is None else environ).get(ENV)
    if not value:
        return None
    try:
        return MarkWriter(Path(value))
    except (OSError, ValueError) as err:
        log.warning("cannot map the publish mark %r: %s; the supervisor learns a killed "
                    "reader's end from its last beat only", value, err)
        return None
