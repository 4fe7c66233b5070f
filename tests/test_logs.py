"""The console (fsd/logs.py): what an error line quotes of an exception."""

from __future__ import annotations

from fsd.logs import first_line


def test_first_line_of_an_error():
    """One line of the message, whatever it carries after it; cut to the limit; the type when it is empty."""
    body = "404 Client Error: Not Found for url: http://hub/x\n<html>\n<body>not found</body>"
    assert first_line(OSError(body)) == "404 Client Error: Not Found for url: http://hub/x"
    assert first_line(ValueError("\n  leading blank lines  \nsecond")) == "leading blank lines"
    assert first_line(RuntimeError("x" * 500)) == "x" * 200
    assert first_line(RuntimeError("x" * 500), 120) == "x" * 120
    assert first_line(EOFError()) == "EOFError" and first_line(OSError("  \n ")) == "OSError"
