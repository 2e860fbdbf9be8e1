"""The one exception type a user sees as a one-line message (CLI exit code 2, HTTP 4xx)."""


class UserError(Exception):
    """Bad input or an unusable file: the message says what is wrong and what to do."""


def first_line(exc: BaseException) -> str:
    """A library exception's message as one short line, to quote inside a UserError."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
