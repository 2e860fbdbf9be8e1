"""The one exception type a user sees as a one-line message (CLI exit code 2, HTTP 4xx)."""


class UserError(Exception):
    """Bad input or an unusable file: the message says what is wrong and what to do."""
