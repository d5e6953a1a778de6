"""A request whose client hangs up is cancelled, whatever the route is doing.

A stream notices a hang-up itself (Starlette's StreamingResponse listens for
http.disconnect while it sends), but a route that answers at the end (POST /generate,
/score, /v1/completions without `stream`) reads nothing from the client while it waits
for its job: without this, the job would run to its end for nobody, holding its row and
its client's quota. Once the app has read the request's body (every route that waits for
a job reads one), this middleware listens for http.disconnect beside it, and on a hang-up
before the response is complete it cancels the app: the routes' clean-ups (a job's
`finished()`, the dependencies that close a job or a completion run) cancel the job in
the engine. The app's own later calls to `receive` get the http.disconnect heard here.

A request that is not cancelled costs a flag until its body is in, then one waiting task.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DISCONNECT: Message = {"type": "http.disconnect"}
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client left before its answer


def unanswered_status(failed: bool) -> int:
    """The status the access log and the metrics record for a request that sent no
    response: 500 if the app failed; 499 if it returned without one, which only a request
    cancelled by its client's hang-up does (HangUpMiddleware ends it quietly)."""
    return 500 if failed else CLIENT_CLOSED_REQUEST


class _Watch:
    """One request's receive and send, shared by the app and a task that listens for the
    hang-up once the body is in."""

    def __init__(self, receive: Receive, send: Send, task: asyncio.Task):
        self._receive = receive
        self._send = send
        self._task = task  # the one running the app: cancelled on a hang-up
        self._body_done = False
        self._gone = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self.response_done = False
        self.hung_up = False

    async def receive(self) -> Message:
        if self._body_done:
            await self._gone.wait()
            return DISCONNECT
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._body_done = True
            self._gone.set()
        elif not message.get("more_body", False):
            self._body_done = True
            self._listener = asyncio.get_running_loop().create_task(self._until_gone())
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.response_done = True  # before the send: a hang-up after it cancels nothing
        await self._send(message)

    async def _until_gone(self) -> None:
        # Past the body only http.disconnect comes (the ASGI spec): when the client goes,
        # or once the response is complete.
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._gone.set()
        if not self.response_done:
            self.hung_up = True
            self._task.cancel()  # the app is waiting inside (this task runs meanwhile)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()


class HangUpMiddleware:
    """Cancels the app's handling of a request once its client has hung up."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        if scope["type"] != "http" or task is None:
            await self.app(scope, receive, send)
            return
        watch = _Watch(receive, send, task)
        ours_ended = False
        try:
            await self.app(scope, watch.receive, watch.send)
        except asyncio.CancelledError:
            # Ours ends here, quietly (the server sees a request whose client left); one
            # from elsewhere (the server shutting down) goes on.
            if not watch.hung_up:
                raise
            ours_ended = True
            if task.uncancel() > 0:
                raise
        finally:
            watch.close()
            if watch.hung_up and not ours_ended:
                task.uncancel()  # the app caught ours and finished: the count is ours to undo
