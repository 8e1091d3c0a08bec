"""emu35-robot: plans with key-frame images from Emu3.5, served over gRPC. This package is the SDK surface.

`PlannerClient` / `AsyncPlannerClient` call a running `emu35-robot serve`; the results are the dataclasses of
`emu35_robot.types`. Importing the package stays cheap: the clients load grpc only when first used.
"""

__version__ = "0.1.0"

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
