"""The emu35.robot.v1 gRPC contract: .proto sources and the Python code grpcio-tools generates from them.

Regenerate with `python -m emu35_robot.proto.build`; `tests/test_service_proto.py` checks the committed files are
exactly what that produces. The generated modules are loaded lazily (`from emu35_robot.proto import planner_pb2`) so
the build script runs even when they are missing.
"""

from __future__ import annotations

import importlib

SERVICE_NAMES = (
    "emu35.robot.v1.Planner",
    "emu35.robot.v1.Generation",
    "emu35.robot.v1.Exploration",
    "emu35.robot.v1.Service",
)
_MODULES = {
    f"{name}{suffix}"
    for name in ("common", "planner", "generation", "exploration", "service")
    for suffix in ("_pb2", "_pb2_grpc")
}


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f".emu35.robot.v1.{name}", __name__)
    raise AttributeError(name)
