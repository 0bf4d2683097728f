"""The checks before a request reaches its endpoint: the API key (401), the body's size (413, chunked bodies
counted as they arrive) and the queue's capacity (429 with ``Retry-After``)."""

from __future__ import annotations

from rrm_jax.serve.protocol import error_response


class Gate:
    """ASGI middleware. Capacity counts the engine's jobs not yet finished (a streamed answer's until its last token, a judge's votes), so it measures the work queued,
    not the connections open."""

    def __init__(self, app, service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        opts, service = self.service.opts, self.service
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        refuse = None
        if opts.api_key and scope["path"] != "/health":
            if headers.get("authorization", "") != f"Bearer {opts.api_key}":
                refuse = error_response(401, "a missing or wrong API key (send Authorization: Bearer KEY)")
        if refuse is None and scope["method"] == "POST":
            size = headers.get("content-length", "")
            if size.isdigit() and int(size) > opts.max_body_bytes:
                refuse = error_response(
                    413, f"the body has {size} bytes; this server takes at most {opts.max_body_bytes}"
                )
            elif service.worker.waiting >= service.capacity:
                msg = f"the queue is full ({service.worker.waiting} requests waiting or running)"
                refuse = error_response(429, msg, headers={"Retry-After": "1"})
            elif not size.isdigit():  # a chunked body declares no size: read it here, counting, then hand it on
                body = await _read_capped(receive, opts.max_body_bytes)
                if body is None:
                    return
                if len(body) > opts.max_body_bytes:
                    refuse = error_response(
                        413, f"the body passed {opts.max_body_bytes} bytes, at most what this server takes"
                    )
                else:
                    receive = _replay(body, receive)
        if refuse is not None:
            return await refuse(scope, receive, send)
        return await self.app(scope, receive, send)


async def _read_capped(receive, cap: int) -> bytes | None:
    """The request body, read until it ends or passes ``cap`` bytes (then what was read); None if the client left."""
    parts, total, more = [], 0, True
    while more and total <= cap:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        parts.append(msg.get("body", b""))
        total += len(parts[-1])
        more = msg.get("more_body", False)
    return b"".join(parts)


def _replay(body: bytes, receive):
    """An ASGI receive that gives ``body`` once, then the connection's own messages (a later disconnect)."""
    sent = False

    async def again():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again
