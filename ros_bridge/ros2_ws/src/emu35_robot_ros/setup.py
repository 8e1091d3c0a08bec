from glob import glob

from setuptools import setup

package_name = "emu35_robot_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=[package_name],
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="emu35-robot",
    maintainer_email="emu35-robot@example.org",
    description="rclpy bridge to the emu35-robot planning service",
    license="Apache-2.0",
    entry_points={"console_scripts": ["planner_node = emu35_robot_ros.planner_node:main"]},
)
