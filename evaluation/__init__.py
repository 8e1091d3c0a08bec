"""Evaluation harness: planners x tasks x engines, closed-loop episodes, resumable runs and reports."""

import emu35_robot  # noqa: F401, E402  (its import turns gRPC's fork support off before grpc loads)
