"""The journal's line codec: its header line, and one line per operation.

Pure bytes in, bytes out; ``journal`` does the files. A journal starts with a header,
``{"format": "djq.journal", "version": 1, "generation": n}`` and a newline; every other
line is ``<crc32 of the JSON, 8 hex digits> <JSON>`` and a newline, the JSON being
``ops``' one codec: ``{"op": name, "now": now, **op.to_json()}``. Imports from djq:
``errors``, ``ops``.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any, Final

import orjson

from . import ops
from .errors import CorruptQueueError, DjqError, UnsupportedVersion

__all__ = [
    "JOURNAL_FORMAT",
    "JOURNAL_VERSION",
    "decode_header",
    "decode_line",
    "encode_header",
    "encode_line",
    "is_checksummed",
]

JOURNAL_FORMAT: Final = "djq.journal"
JOURNAL_VERSION: Final = 1


def encode_line(op: ops.Op[Any], now: float) -> bytes:
    """Return one journal line: checksum, space, the operation as JSON, newline."""
    doc = orjson.dumps({"op": op.name, "now": now, **op.to_json()})
    return b"%08x %s\n" % (zlib.crc32(doc), doc)


def decode_line(line: bytes) -> tuple[ops.Op[Any], float]:
    """Parse one journal line (without its newline) back into ``(operation, now)``.

    Raises:
        ValueError: the checksum does not match, or the line is not an operation that
            changes a queue (an unknown one, or a bad field).
    """
    if len(line) < 10 or line[8:9] != b" ":
        raise ValueError("not a journal line")
    doc = line[9:]
    if int(line[:8], 16) != zlib.crc32(doc):
        raise ValueError("checksum mismatch")
    fields = orjson.loads(doc)
    now = fields.pop("now", None) if type(fields) is dict else None
    if (type(now) is not float and type(now) is not int) or not math.isfinite(now):  # a bool is neither
        raise ValueError("no time, or a bad one")
    try:
        op = ops.from_json(fields)
    except DjqError as exc:
        raise ValueError(str(exc)) from None
    except (TypeError, KeyError, AttributeError) as exc:  # a wrong-typed field ("op": [1], say)
        raise ValueError(f"bad fields: {type(exc).__name__}: {exc}") from None
    if not op.writes:
        raise ValueError(f"{op.name!r} does not change a queue")
    return op, float(now)


def is_checksummed(line: bytes) -> bool:
    """Whether a line is whole: its checksum matches (so a decode failure is not a torn write)."""
    try:
        return len(line) >= 10 and line[8:9] == b" " and int(line[:8], 16) == zlib.crc32(line[9:])
    except ValueError:
        return False


def encode_header(generation: int) -> bytes:
    """Return the header line of an empty journal of ``generation``, newline included."""
    header = orjson.dumps({"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "generation": generation})
    return header + b"\n"


def decode_header(line: bytes, where: Path) -> int:
    """Return the generation a journal's header line (without its newline) names.

    Raises:
        CorruptQueueError: the line is not a djq journal header.
        UnsupportedVersion: the journal is of a newer version than this djq reads.
    """
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        doc = None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != JOURNAL_FORMAT
        or type(doc.get("generation")) is not int
    ):
        raise CorruptQueueError(path=str(where), reason="not a djq journal (bad header line)")
    version = doc.get("version")
    if type(version) is not int or version < 1:
        raise CorruptQueueError(path=str(where), reason='the header\'s "version" is not a version djq writes')
    if version > JOURNAL_VERSION:
        raise UnsupportedVersion(
            path=str(where),
            reason=f"journal version {version} is newer than this djq reads ({JOURNAL_VERSION})",
        )
    return int(doc["generation"])
