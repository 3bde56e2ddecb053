"""Server-sent events read as they pass by: a stream whose raw body the app reads itself (``with_streaming_response``
then ``iter_bytes()``, ``iter_text()`` or ``iter_lines()``: an SSE pass-through proxy) still has its events seen by
the call's accumulator, which then counts the output (and reads the usage, where the stream carries it) as it would
have from the SDK's own stream.

Each provider's ``Endpoint.raw_event`` takes an event as its SDK's stream does: the event to observe, one to pass
over, or the point where the SDK's stream would have stopped (``[DONE]``) or raised (an error event, data that is not
JSON): ``StreamEnds``. The app's body goes on as it came; llmtrace reads no further events of it.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any, Callable

# A line ends with CRLF, LF or CR (the SSE spec); not str.splitlines(), which also cuts at U+2028 and other characters
# a JSON string may hold unescaped.
_LINE_END = re.compile("\r\n|\r|\n")
# iter_lines() cuts where str.splitlines() does: also at a U+2028, U+2029 or U+0085 a JSON string may hold as it is.
# Which of them it was is lost: a cut line is rejoined with this one.
_CUT = "\u2028"


class Fields(dict[str, Any]):
    """An event's JSON object, read as the SDK's models are read: by attribute (a missing one raises
    AttributeError, so ``getattr(..., None)`` gives None) or by key."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class StreamEnds(Exception):
    """The SDK's own stream would stop at this event: failing (``failure``: error type, message) or not."""

    def __init__(self, failure: tuple[str, str] | None = None) -> None:
        super().__init__(failure)
        self.failure = failure


# An event's name (None: unnamed), its data, and that data read as JSON (a ValueError where it is not) -> the event to
# observe, None to pass over; raises StreamEnds.
RawEventRule = Callable[[str | None, str, Any], Any]


def json_of(parsed: Any) -> Any:
    """A rule's reading of an event's data as JSON, where the SDK reads it: not JSON, the SDK's stream fails there."""
    if isinstance(parsed, ValueError):
        raise StreamEnds((type(parsed).__name__, str(parsed)))
    return parsed


def _parsed(data: str) -> Any:
    try:
        return json.loads(data, object_hook=Fields)
    except ValueError as exc:
        return exc


def _value(line: str, name_length: int) -> str:
    """A field's value: what follows its name and colon, less one leading space (the SSE spec)."""
    value = line[name_length:]
    return value[1:] if value.startswith(" ") else value


def _cut_in_a_string(parsed: Any) -> bool:
    # A line iter_lines() cut inside a JSON string (the only place those characters can be unescaped).
    return isinstance(parsed, json.JSONDecodeError) and parsed.msg.startswith("Unterminated string")


class EventReader:
    """The pieces of an SSE body in, each event out to ``rule``, then to ``observe`` or ``fail``.

    ``lines``: each piece is one line, its ending cut off (``iter_lines()``); otherwise text or bytes cut anywhere,
    even inside a line or a UTF-8 character. As the SDKs' decoders: an event the body ends before finishing (no blank
    line after it) is not dispatched.
    """

    def __init__(
        self, rule: RawEventRule, observe: Callable[[Any], object], fail: Callable[[tuple[str, str]], None], lines: bool
    ) -> None:
        self._rule = rule
        self._observe = observe
        self._fail = fail
        self._lines = lines
        self._ended = False  # the SDK's stream would have stopped: nothing more is read
        self._rest: list[str] = []  # the start of a line whose end has not come yet
        self._name: str | None = None  # the event being read: its name, its data lines
        self._data: list[str] = []
        # iter_lines(): every line after the event's first data line, blank ones included where the data could not be
        # read yet, in case iter_lines() cut that line (see _CUT)
        self._after: list[str] = []
        self._held = False  # the event's data could not be read at its blank line: a cut line, perhaps
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def read(self, piece: Any) -> bool:
        """Read one piece of the body; True: it goes on to the app as it came."""
        if self._ended:
            return True  # nothing more is read
        text = self._utf8.decode(piece) if isinstance(piece, (bytes, bytearray)) else piece
        if not isinstance(text, str):
            return True
        if self._lines:
            self._line(text)  # an empty one is a blank line
        elif not text:
            pass  # nothing to read (an empty piece, or the first bytes of a character): a held CR stays held
        elif "\n" not in text and "\r" not in text and not (self._rest and self._rest[-1].endswith("\r")):
            self._rest.append(text)  # kept apart, joined once the line ends: a long line in small pieces stays linear
        else:
            text = "".join(self._rest) + text
            # A last CR may be the first half of a CRLF: the next piece with text in it decides it (above: one with no
            # line ending of its own comes here too, the held CR then ending a line).
            held_cr = text.endswith("\r")
            lines = _LINE_END.split(text[:-1] if held_cr else text)
            last = lines.pop() + ("\r" if held_cr else "")
            self._rest = [last] if last else []
            for line in lines:
                self._line(line)
        return True

    def end(self) -> None:
        """The body ended: a line still held (a last CR, that no LF followed) ends there; an event held for the rest of
        a cut line that never came was not JSON after all."""
        rest = "".join(self._rest)
        self._rest = []
        if rest.endswith("\r"):
            for line in _LINE_END.split(rest[:-1]):
                self._line(line)
        if self._held:
            self._event_ends(final=True)

    def _line(self, line: str) -> None:
        if self._ended:
            return
        if self._lines and self._data and line:
            self._after.append(line)  # another field, or the rest of a cut line: decided when the event ends
            if not line.startswith("data:"):
                return
        if not line:
            self._event_ends()
        elif line.startswith("data:"):
            self._data.append(_value(line, 5))
        elif line.startswith("event:"):
            self._name = _value(line, 6)
        # Other fields (id, retry) and comments: nothing an accumulator reads.

    def _event_ends(self, final: bool = False) -> None:
        if not self._data and self._name is None:
            return
        data = "\n".join(self._data)
        parsed = _parsed(data)
        if self._lines and self._data and isinstance(parsed, ValueError):
            # iter_lines() may have cut the data line: read it again, rejoined with every line after it.
            rejoined = _CUT.join([self._data[0], *self._after])
            parsed_rejoined = _parsed(rejoined) if self._after else parsed
            if not isinstance(parsed_rejoined, ValueError):
                data, parsed = rejoined, parsed_rejoined
            elif not final and _cut_in_a_string(parsed_rejoined):
                # Cut twice in a row (an empty line between), or not JSON at all: the next lines, or the body's end,
                # tell.
                self._after.append("")
                self._held = True
                return
        name = self._name
        self._name, self._data, self._after, self._held = None, [], [], False
        try:
            event = self._rule(name, data, parsed)
        except StreamEnds as ends:
            self._ended = True
            if ends.failure is not None:
                self._fail(ends.failure)
            return
        if event is not None:
            self._observe(event)
