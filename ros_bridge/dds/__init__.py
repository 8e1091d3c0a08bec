"""DDS mode: the bridge on ROS 2's wire conventions through cyclonedds, for machines without a ROS install."""
