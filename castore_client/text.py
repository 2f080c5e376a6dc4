"""Text shown to a user that came from the outside world: a path, a name from a server.

A file name may hold a newline, an escape sequence or bytes that are not UTF-8. Printed
as they are, they split one error into two lines or make the terminal do things; so every
path an error message names goes through `printable`.
"""

from __future__ import annotations

import os


def printable(text: str | bytes) -> str:
    """`text` with control characters and undecodable bytes as backslash escapes.

    Printable text, spaces and non-ASCII letters included, is left as it is; a newline
    becomes `\\n`, an escape `\\x1b`, a byte that is not UTF-8 `\\xff`.
    """
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        elif "\udc80" <= char <= "\udcff":  # a byte os.fsdecode could not decode
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)
