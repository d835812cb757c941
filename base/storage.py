"""The storage format: the data files' columns, header, rows and names, in one place.

Everything that writes or reads PowMon's CSV data files uses this module: the writer (its rows
and file names), its resume from the tail, the energy tail, `powmon report` and `powmon plot`,
and the web page's file listing. A column, the header or the name pattern changes here once.

A data file is `<stem>-<counter>-<UTC time><suffix>`, e.g. `data-000001-20261125T174216Z.csv`
for LOCAL_DATA_FILE `data.csv`. The counter comes first so that lexical order is creation order
even when the wall clock jumps back; the time is there for people (docs/writer.md).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from math import isfinite
from pathlib import Path, PurePath
from typing import IO, Final, NamedTuple, cast

from powmon.base.text import FLAG_TEXT, flag_names, parse_flags, parse_ts, seconds_text
from powmon.common.schema.readings import Reading

CSV_FIELDS: Final = (
    "timestamp", "sensor_id", "session", "seq", "raw", "volts", "amps", "watts", "flags",
)
TS, SENSOR, SESSION, SEQ, RAW, VOLTS, AMPS, WATTS, FLAGS = range(len(CSV_FIELDS))
LINE_TERMINATOR: Final = "\n"
COUNTER_WIDTH: Final = 6
TIME_FORMAT: Final = "%Y%m%dT%H%M%SZ"
# COMPRESS value -> the suffix a closed file gets when it is compressed (docs/writer.md)
COMPRESSED_SUFFIX: Final = {"gzip": ".gz", "zstd": ".zst", "none": ""}
_COMPRESSION_OF: Final = {s: kind for kind, s in COMPRESSED_SUFFIX.items() if s}
DATA_GLOBS: Final = ("*.csv", "*.csv.gz", "*.csv.zst")  # what a folder of data files holds
TEMP_SUFFIX: Final = ".tmp"  # a compressed copy being written: removed at the next start
# <stem>-<counter>-<UTC time><suffix>[.gz|.zst], as FileNaming.name makes them
ROTATED: Final = re.compile(
    r"(?P<stem>.+)-(?P<counter>\d{6,})-\d{8}T\d{6}Z(?P<suffix>\.\w+)?(?P<packed>\.gz|\.zst)?")
_IDS_MAX: Final = 4096  # ids cached by csv_field (they come off the bus: bounded)


def header_line() -> str:
    """The header row exactly as the csv module writes it, so a resumed file can be checked."""
    out = io.StringIO()
    csv.writer(out, lineterminator=LINE_TERMINATOR).writerow(CSV_FIELDS)
    return out.getvalue()


_csv_ids: dict[str, str] = {}  # sensor_id or session -> its CSV field


def csv_field(text: str) -> str:
    """A text field as csv.writer writes it among others (quoted or not, as this Python's csv
    module decides: it is asked once per text), cached: ids repeat on every row."""
    return _csv_ids.get(text) or _csv_field(text)


def _csv_field(text: str) -> str:
    if len(_csv_ids) >= _IDS_MAX:
        _csv_ids.clear()
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow((text, ""))
    field = _csv_ids[text] = out.getvalue()[:-2]  # without ",\n"
    return field


def csv_lines(readings: Iterable[Reading]) -> list[str]:
    """The CSV line of each reading, with its line end: the one row formatter of PowMon (the
    writer's files, the uplink's csv body), exactly what csv.writer makes of the columns
    (tests/fuzz/test_fuzz_schema.py checks the two against each other) in one formatting step
    per row, the writer's hot path."""
    flag_text, known, ids = FLAG_TEXT, len(FLAG_TEXT), _csv_ids
    last_secs: int | None = None  # no second is None: the first row always looks it up
    stamp = ""
    lines: list[str] = []
    for sensor_id, session, seq, ts_ns, raw, volts, amps, watts, flags in readings:
        secs = ts_ns // 1_000_000_000
        if secs != last_secs:
            last_secs, stamp = secs, seconds_text(secs)
        sid = ids.get(sensor_id) or _csv_field(sensor_id)
        sess = ids.get(session) or _csv_field(session)
        flag = flag_text[flags] if 0 <= flags < known else flag_names(flags)
        lines.append(
            f"{stamp}.{ts_ns // 1000 % 1_000_000:06d}Z,{sid},{sess},{seq},{raw!r},"
            f"{volts:.5f},{amps:.4f},{watts:.3f},{flag}\n"
        )
    return lines


class StoredRow(NamedTuple):
    """A data row read back, typed: what report, plot and the energy tail use of it."""

    ts_ns: int
    sensor_id: str
    session: str
    seq: int
    amps: float
    watts: float
    flags: str


def parse_row(fields: list[str]) -> StoredRow:
    """A data row's fields as the offline tools and the energy tail use them (the columns they
    need, parsed: the inner loop of report and plot; parse_reading reads every column); a
    ValueError (naming what is wrong) for a row that is not a reading: the wrong field count,
    a bad timestamp or number, amps or watts that are not finite."""
    if len(fields) != len(CSV_FIELDS):
        raise ValueError(f"{len(fields)} fields, expected {len(CSV_FIELDS)}")
    amps, watts = float(fields[AMPS]), float(fields[WATTS])
    if not (isfinite(amps) and isfinite(watts)):
        raise ValueError(f"amps {amps} / watts {watts} are not finite")
    return StoredRow(parse_ts(fields[TS]), fields[SENSOR], fields[SESSION], int(fields[SEQ]),
                     amps, watts, fields[FLAGS])


def parse_reading(fields: list[str]) -> Reading:
    """A whole data row read back as the Reading it was written from (csv_lines of it gives
    the row again), for tools that write every column (`powmon export`); ValueError (naming
    what is wrong) for a row that is not a reading, as parse_row, and also for a number that
    is not finite or a flag PowMon does not know. `raw` keeps the type it was written with:
    an ADC count stays an int."""
    if len(fields) != len(CSV_FIELDS):
        raise ValueError(f"{len(fields)} fields, expected {len(CSV_FIELDS)}")
    text = fields[RAW]
    raw = int(text) if text.lstrip("-").isdigit() else float(text)
    volts, amps, watts = float(fields[VOLTS]), float(fields[AMPS]), float(fields[WATTS])
    if not all(map(isfinite, (raw, volts, amps, watts))):
        raise ValueError(f"raw {raw} / volts {volts} / amps {amps} / watts {watts}: "
                         "not all finite")
    return Reading(fields[SENSOR], fields[SESSION], int(fields[SEQ]), parse_ts(fields[TS]),
                   raw, volts, amps, watts, parse_flags(fields[FLAGS]))


def data_rows(lines: Iterable[str]) -> Iterator[list[str]]:
    """The data rows of CSV text as field lists (headers, partial lines and foreign rows left
    out), unparsed: the writer's resume reads only ids and seqs of millions of them."""
    width = len(CSV_FIELDS)
    for row in csv.reader(lines):
        if len(row) == width and row[SEQ].isdigit():
            yield row


@dataclass(frozen=True, slots=True)
class FileNaming:
    """How data file names derive from LOCAL_DATA_FILE, and how to read them back."""

    stem: str
    suffix: str

    @classmethod
    def from_data_file(cls, data_file: str) -> FileNaming:
        name = PurePath(data_file).name
        suffix = PurePath(name).suffix
        stem = name[: len(name) - len(suffix)] if suffix else name
        return cls(stem or "data", suffix)

    def name(self, counter: int, created: float) -> str:
        stamp = time.strftime(TIME_FORMAT, time.gmtime(created))
        return f"{self.stem}-{counter:0{COUNTER_WIDTH}d}-{stamp}{self.suffix}"

    def counter_of(self, name: str) -> int | None:
        """The counter of a data file name, raw or compressed, or None for any other file."""
        pattern = rf"{re.escape(self.stem)}-(\d{{{COUNTER_WIDTH},}})-\d{{8}}T\d{{6}}Z"
        match = re.fullmatch(pattern + re.escape(self.suffix) + r"(?:\.gz|\.zst)?", name)
        return int(match.group(1)) if match else None


def list_files(root: Path, naming: FileNaming) -> list[tuple[int, Path]]:
    """The data files in `root` as (counter, path), oldest first; other files are ignored.

    One path per counter: of a file and its compressed copy, the original (one_copy).
    """
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    counted = {Path(e.path): c for e in entries
               if (c := naming.counter_of(e.name)) is not None and e.is_file()}
    kept: dict[int, Path] = {}
    for path in one_copy(counted):
        kept.setdefault(counted[path], path)
    return sorted(kept.items())


def one_copy(paths: Iterable[Path]) -> list[Path]:
    """The paths less the compressed copies whose original is among them: a file and its copy
    both exist only between the copy's rename and the original's removal (a compression cut
    short), and the original is whole, so it is the one read: no row is ever read twice. The
    writer's listing and the tools' (any paths given) both take this rule."""
    paths = list(paths)
    plain = {p for p in paths if compression_of(p) is None}
    return [p for p in paths if compression_of(p) is None or p.with_name(p.stem) not in plain]


def find_current(root: Path, naming: FileNaming) -> tuple[int, Path] | None:
    """The file with the highest counter, which is where appending resumes."""
    files = list_files(root, naming)
    return files[-1] if files else None


def compression_of(path: PurePath) -> str | None:
    """'gzip' or 'zstd' for a compressed data file (by its suffix), None for a plain one."""
    return _COMPRESSION_OF.get(path.suffix)


def plain_name(path: PurePath) -> str:
    """The name of a data file without its compression suffix (the name it was written as)."""
    return path.stem if compression_of(path) is not None else path.name


def open_bytes(path: Path) -> IO[bytes]:
    """A data file's bytes, decompressed as they are read: every tool reads `.csv.gz` and
    `.csv.zst` exactly like `.csv`. zstd needs the `zstandard` package (`powmon[zstd]`)."""
    kind = compression_of(path)
    if kind is None:
        return path.open("rb")
    if kind == "gzip":
        return cast("IO[bytes]", gzip.open(path, "rb"))  # a GzipFile, read as bytes
    try:
        import zstandard  # noqa: PLC0415 -- an extra, needed only for .zst files
    except ImportError as err:
        raise OSError(f"{path}: reading .zst files needs zstandard "
                      "(pip install 'powmon[zstd]')") from err
    return zstandard.ZstdDecompressor().stream_reader(path.open("rb"), closefd=True)


def open_text(path: Path) -> IO[str]:
    """A data file's text (UTF-8; undecodable bytes replaced, so a damaged file is read as
    far as it goes), decompressed as it is read, for csv.reader."""
    return io.TextIOWrapper(open_bytes(path), encoding="utf-8", errors="replace", newline="")


def read_tail(path: Path, budget: int) -> tuple[bytes, int]:
    """The last `budget` bytes of a data file's content (decompressed) from the start of a
    line, and what is left of the budget: how the writer reads the newest rows at start.

    A plain file is read from an offset; a compressed one (closed, at most FILE_SIZE_LIMIT
    decompressed) is read whole and cut: it cannot be entered in the middle.
    """
    if compression_of(path) is None:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - budget)
            f.seek(start)
            data = f.read(size - start)  # bounded: a device file may never end
    else:
        with open_bytes(path) as f:
            data = f.read()
        size = len(data)
        start = max(0, size - budget)
        data = data[start:]
    if start > 0:  # drop the partial first line
        data = data[data.find(b"\n") + 1 :]
    return data, budget - (size - start)


def creation_order(path: Path) -> tuple[str, str, int, str]:
    """A sort key that puts data files of any stem in creation order (by their counter, not
    by the order a shell listed them in); other names sort by name, before them."""
    match = ROTATED.fullmatch(path.name)
    if match is None:
        return (str(path.parent), path.name, -1, "")
    return (str(path.parent), match["stem"], int(match["counter"]), path.name)


def is_data_header(fields: list[str]) -> bool:
    """Whether a CSV file's first row is the data files' header."""
    return tuple(fields) == CSV_FIELDS
