"""ros2 launch emu35_robot_ros planner.launch.py server:=host:50051 [params_file:=my.yaml] [camera_topic:=...]"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("emu35_robot_ros"), "config", "planner.yaml")
    args = [
        DeclareLaunchArgument("server", default_value="localhost:50051", description="emu35-robot gRPC service"),
        DeclareLaunchArgument("camera_topic", default_value="camera/image_raw"),
        DeclareLaunchArgument("params_file", default_value=default_params),
    ]
    node = Node(
        package="emu35_robot_ros",
        executable="planner_node",
        name="emu35_planner",
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {"server": LaunchConfiguration("server"), "camera_topic": LaunchConfiguration("camera_topic")},
        ],
    )
    return LaunchDescription([*args, node])
