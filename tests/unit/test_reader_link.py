"""Answer parsing and the request commands of the reader's serial protocol."""

from __future__ import annotations

import pytest

from powmon.readers.link import BadAnswer, parse_answer, read_command


@pytest.mark.parametrize(
    ("line", "value"),
    [
        (b"512\r\n", 512),
        (b"0\r\n", 0),
        (b"1023\r\n", 1023),
        (b"7\n", 7),
        (b" 300 \r\n", 300),
        (b"511.75\r\n", 511.75),
        (b"12.5\r\n", 12.5),
    ],
)
def test_valid_answers_parse_to_their_count(line: bytes, value: float) -> None:
    """Integer and decimal (averaged / RMS) counts in 0..1023 with a line end are readings."""
    got = parse_answer(line)
    assert got == value
    assert type(got) is type(value)


def test_integer_answers_stay_integers() -> None:
    """A plain count stays an int, so CSV shows '512' as the original did, not '512.0'."""
    assert isinstance(parse_answer(b"512\r\n"), int)
    assert isinstance(parse_answer(b"512.0\r\n"), float)


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"", "timeout"),
        (b"51", "partial"),
        (b"512", "partial"),
        (b"abc\r\n", "non_numeric"),
        (b"ok\r\n", "non_numeric"),
        (b"\r\n", "non_numeric"),
        (b"-3\r\n", "non_numeric"),
        (b"1e3\r\n", "non_numeric"),
        (b"nan\r\n", "non_numeric"),
        (b"inf\r\n", "non_numeric"),
        (b"5 12\r\n", "non_numeric"),
        (b"1_000\r\n", "non_numeric"),
        (
            "\u0665\u0661\u0662\r\n".encode(),
            "non_numeric",
        ),  # Arabic-Indic digits: float() takes them
        (b"\xff512\xfe\r\n", "non_utf8"),
        (b"\x80\x81garbage\r\n", "non_utf8"),
        (b"1024\r\n", "out_of_range"),
        (b"1023.5\r\n", "out_of_range"),
        (b"99999\r\n", "out_of_range"),
    ],
)
def test_bad_answers_are_named(line: bytes, kind: str) -> None:
    """Silence, cut-off lines, garbage, non-UTF-8 and out-of-range counts are never readings."""
    with pytest.raises(BadAnswer) as info:
        parse_answer(line)
    assert info.value.kind == kind
    assert info.value.line == line


def test_bad_answer_text_is_bounded() -> None:
    """A long garbage line is shortened in the log text, so one bad line is one short log line."""
    bad = BadAnswer("non_numeric", b"x" * 500 + b"\r\n")
    assert len(str(bad)) < 80
    assert str(bad).startswith("non_numeric: ")


@pytest.mark.parametrize(
    ("channel", "command"), [(None, b"read \n"), (0, b"read 0\n"), (5, b"read 5\n")]
)
def test_read_command_names_the_channel_only_when_set(channel: int | None, command: bytes) -> None:
    """Without CHANNEL the request is the original `read \\n`, so old sketches keep working."""
    assert read_command(channel) == command
