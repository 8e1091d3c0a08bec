"""Bearer-token authentication: a server interceptor that rejects calls without `authorization: Bearer <token>`.

Health checks stay open (load balancers and orchestrators probe without credentials); every other method, reflection
included, needs the token when one is set. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

import grpc

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class TokenAuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str, on_reject: Callable[[str], None] | None = None):
        self._expected = f"Bearer {token}".encode()
        self._on_reject = on_reject

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES):
            return continuation(handler_call_details)
        got = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(got.encode() if isinstance(got, str) else got, self._expected):
            return continuation(handler_call_details)
        if self._on_reject is not None:
            self._on_reject(method)
        handler = continuation(handler_call_details)
        return _reject_like(handler, "missing or invalid bearer token (metadata 'authorization: Bearer <token>')")


def _reject_like(handler, details: str):
    """A handler of the same streaming kind as `handler` that fails with UNAUTHENTICATED."""

    def abort(_request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, details)

    if handler is None:
        return None
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)
