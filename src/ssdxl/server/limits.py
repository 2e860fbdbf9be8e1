"""Request body size limit: 413 before a large body is read into memory.

A declared ``Content-Length`` over the limit is refused at once. A body without one (chunked) is
read here, up to the limit, before the app sees any of it: one byte over and the answer is 413,
whatever the endpoint or content type would have made of a cut-off body (a form parser's 400, a
422 for a form it never read). What was read is then handed to the app as it arrived.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ssdxl.server.errors import error_response


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes")


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        if not declared.isdigit():
            try:
                receive = await self._buffered(receive)
            except BodyTooLarge:
                return await self._refuse(scope, receive, send)
        seen = 0

        async def counted() -> Message:  # a server that lets more than Content-Length through still stops here
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)

    async def _buffered(self, receive: Receive) -> Receive:
        """The whole body (at most ``max_bytes``) read now; a receive that replays it, then the real one."""
        messages: list[Message] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            if not message.get("more_body"):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        return replay

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, BodyTooLarge(self.max_bytes).detail)(scope, receive, send)
