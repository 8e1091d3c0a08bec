"""ROS 2 bridge: a planner node for rclpy users and a DDS mode that needs no ROS install. A client of the service."""
