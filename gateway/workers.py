"""gunicorn worker classes.

:class:`FairGeventWorker` is gunicorn's gevent worker with one change: it yields
to the other connections after every request.  The stock worker serves the next
request of a keep-alive connection without yielding whenever it has already
arrived, so with nginx's pooled keep-alive connections a few connections can
monopolise a worker while the others wait: measured here with wrk (20
connections, 2 workers), p99 fell from ~590 ms to ~30 ms for a bare Flask view,
at a few per cent of throughput.

It also closes connections the app has taken over (WebSockets relayed by the
reverse proxy, :data:`gateway.views.proxy.TAKEN_OVER`).
"""

from __future__ import annotations

from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker


class FairGeventWorker(GeventWorker):  # type: ignore[misc]
    def is_already_handled(self, respiter: Any) -> bool:
        """A connection the app took over (a relayed WebSocket) is closed here,
        without a response written on it: the hook gunicorn leaves for this."""
        from gateway.views.proxy import TAKEN_OVER

        if respiter is TAKEN_OVER:
            raise StopIteration()
        return bool(super().is_already_handled(respiter))

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            gevent.sleep(0)  # let the other connections' greenlets run
