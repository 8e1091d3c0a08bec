"""ROS 2 bridge: a planner node for rclpy users and a DDS mode that needs no ROS install. A client of the service."""

import emu35_robot  # noqa: F401, E402  (its import turns gRPC's fork support off before grpc loads)
