"""emu35-robot: plans with key-frame images from Emu3.5, served over gRPC. This package is the SDK surface.

`PlannerClient` / `AsyncPlannerClient` call a running `emu35-robot serve`; the results are the dataclasses of
`emu35_robot.types`. Importing the package stays cheap: the clients load grpc only when first used.
"""

import os

__version__ = "0.1.0"

# gRPC's fork support restarts its pollers in a forked child, which can crash between fork and exec while channels
# are active (grpc/grpc#43055, grpcio >= 1.80): the ffmpeg that writes episode videos then died, and the demo or eval
# lost its video to a broken pipe in 3 of 24 loaded runs (0 of 48 with it off). We never use gRPC in a forked child
# (worker processes are spawned), so it is off unless the user says otherwise. Set before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

_LAZY = {
    "PlannerClient": ".client",
    "ExploreSession": ".client",
    "AsyncPlannerClient": ".aio_client",
    "PlannerServer": ".server",
    "Limits": ".limits",
    "Options": ".types",
    "Plan": ".types",
    "Subgoal": ".types",
    "Generation": ".types",
    "ExploreTurn": ".types",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(name)


__all__ = list(_LAZY)
