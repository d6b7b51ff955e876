"""Request body size limit, enforced on the wire (Content-Length and streamed bytes alike)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.problems import Problem, problem_response

# Invalid tokens one client address may send: a burst (a person retyping a token), then one every two
# seconds; past that the address is answered 429 without a database lookup (see serving.auth).
AUTH_FAILURE_BURST = 20
AUTH_FAILURES_PER_MINUTE = 30.0


class BodySizeLimit:
    """Answer 413 as soon as a request body exceeds ``max_bytes``; nothing larger is buffered.

    Install with ``app.add_middleware`` so that the :class:`Problem` raised while a route reads the
    body reaches the app's problem handler.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _detail(self) -> str:
        return f"request body exceeds the limit of {self.max_bytes} bytes (max_upload_bytes)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await problem_response(413, self._detail())(scope, receive, send)
            return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise Problem(413, self._detail())
            return message

        await self.app(scope, counting_receive, send)
