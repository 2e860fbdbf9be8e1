"""The one exception type a user sees as a one-line message (CLI exit code 2, HTTP 4xx)."""


class UserError(Exception):
    """Bad input or an unusable file: the message says what is wrong and what to do."""


class FieldError(UserError):
    """A UserError in one named field of a request, so an HTTP answer can name it (422, or ``status``: 404 where the
    field names something the server does not serve); the CLI prints the message like any other."""

    def __init__(self, field: str, message: str, *, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message
        self.status = status


def first_line(exc: BaseException) -> str:
    """A library exception's message as one short line, to quote inside a UserError."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
