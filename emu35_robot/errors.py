"""A request error with its gRPC status: raised anywhere in a handler, turned into the RPC's status in one place."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str], ...] = ()):
        super().__init__(details)
        self.code, self.details, self.trailers = code, details, trailers


def invalid(details: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, details)
