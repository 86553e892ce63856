"""Turning generated tokens into text pieces: whole UTF-8 characters only, stop strings cut out."""

from __future__ import annotations

import codecs


class TextStream:
    """Feed token bytes, get the text that is safe to send now.

    A token can end inside a multi-byte character, so bytes wait until the character is whole.
    Text that could be the start of a stop string waits until we know it is not; when a stop
    string appears, the text before it is released and :attr:`stopped` becomes true.
    """

    def __init__(self, stop: list[str] | None = None):
        self.stop = [s for s in (stop or []) if s]
        self.stopped = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # text not yet released because it may begin a stop string

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return the text that can be sent now (maybe ``""``)."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(data)
        if not self.stop:
            out, self._held = self._held, ""
            return out
        cut = min((i for i in (self._held.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._held = self._held[:cut], ""
            return out
        keep = self._longest_stop_prefix_at_end()
        out, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        return out

    def flush(self) -> str:
        """The text still held back, at the end of generation."""
        if self.stopped:
            return ""
        out = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return out

    def _longest_stop_prefix_at_end(self) -> int:
        """Length of the longest tail of the held text that a stop string starts with."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self._held)), best, -1):
                if s.startswith(self._held[-n:]):
                    best = n
                    break
        return best
