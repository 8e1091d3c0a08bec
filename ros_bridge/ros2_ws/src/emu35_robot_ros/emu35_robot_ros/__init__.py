"""rclpy front end of ros_bridge: the planner node."""
