"""Server-sent events read as they pass by: a stream whose raw body the app reads itself (``with_streaming_response``
then ``iter_bytes()``, ``iter_text()`` or ``iter_lines()``: an SSE pass-through proxy) still has its events seen by
the call's accumulator, which then counts the output (and reads the usage, where the stream carries it) as it would
have from the SDK's own stream.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any, Callable

# A line ends with CRLF, LF or CR (the SSE spec); not str.splitlines(), which also cuts at U+2028 and other characters
# a JSON string may hold unescaped.
_LINE_END = re.compile("\r\n|\r|\n")

# The lines an SSE body may hold besides data lines (and blank ones): other fields, and comments.
_OTHER_LINES = ("event:", "id:", "retry:", ":")


class Fields(dict[str, Any]):
    """An event's JSON object, read as the SDK's models are read: by attribute (a missing one raises
    AttributeError, so ``getattr(..., None)`` gives None) or by key."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class EventReader:
    """The pieces of an SSE body in, each event's JSON data out to ``observe``.

    ``lines``: each piece is one line, its ending cut off (``iter_lines()``); otherwise text or bytes cut anywhere,
    even inside a line or a UTF-8 character. Like the SDKs: ``[DONE]`` is no event, data that is not a JSON object
    is passed over, and an event the body ends before finishing (no blank line after it) is not dispatched.
    """

    def __init__(self, observe: Callable[[Any], object], lines: bool) -> None:
        self._observe = observe
        self._lines = lines
        self._rest: list[str] = []  # the start of a line whose end has not come yet
        self._data: list[str] = []  # the data lines of the event being read
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def read(self, piece: Any) -> bool:
        """Read one piece of the body; True: it goes on to the app as it came."""
        text = self._utf8.decode(piece) if isinstance(piece, (bytes, bytearray)) else piece
        if not isinstance(text, str):
            return True
        if self._lines:
            self._line(text)
        elif "\n" not in text and "\r" not in text:
            self._rest.append(text)  # kept apart, joined once the line ends: a long line in small pieces stays linear
        else:
            text = "".join(self._rest) + text
            held_cr = text.endswith("\r")  # may be the first half of a CRLF: decided by the next piece
            lines = _LINE_END.split(text[:-1] if held_cr else text)
            last = lines.pop() + ("\r" if held_cr else "")
            self._rest = [last] if last else []
            for line in lines:
                self._line(line)
        return True

    def _line(self, line: str) -> None:
        if not line:
            if self._data:
                data = "\n".join(self._data)
                self._data = []
                self._dispatch(data)
        elif line.startswith("data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(" ") else value)
        elif self._lines and self._data and not line.startswith(_OTHER_LINES):
            # iter_lines() cuts where str.splitlines() does: also at a U+2028, U+2029 or U+0085 a JSON string may hold
            # as it is. The rest of the data line, rejoined (at U+2028: which of the three it was is lost).
            self._data[-1] += "\u2028" + line
        # Other fields (event, id, retry) and comments: the data's own "type" names each event the accumulators read.

    def _dispatch(self, data: str) -> None:
        if data.startswith("[DONE]"):
            return
        try:
            event = json.loads(data, object_hook=Fields)
        except ValueError:
            return  # not JSON: nothing a provider's accumulator reads
        if isinstance(event, Fields):
            self._observe(event)
