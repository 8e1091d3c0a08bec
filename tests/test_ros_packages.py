"""The ROS 2 packages are well-formed without a ROS install: manifests, build files, interface fields the node uses."""

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "ros_bridge" / "ros2_ws" / "src"
NODE = SRC / "emu35_robot_ros"


def fields(path: Path) -> list[list[str]]:
    """Field names of each section (goal / result / feedback, or request / response) of a .action or .srv file."""
    sections, cur = [], []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line == "---":
            sections.append(cur)
            cur = []
        elif line:
            typ, name = line.split()[:2]
            assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
            cur.append(name)
    return [*sections, cur]


@pytest.mark.parametrize("pkg, build", [("emu35_robot_interfaces", "ament_cmake"), ("emu35_robot_ros", "ament_python")])
def test_package_xml(pkg, build):
    root = ET.parse(SRC / pkg / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == pkg
    assert root.find("export").findtext("build_type") == build


def test_interfaces_are_generated_and_have_the_issue_fields():
    cmake = (SRC / "emu35_robot_interfaces" / "CMakeLists.txt").read_text()
    listed = re.findall(r'"((?:action|srv)/\w+\.(?:action|srv))"', cmake)
    assert sorted(listed) == sorted(str(p.relative_to(SRC / "emu35_robot_interfaces")) for p in
                                    (SRC / "emu35_robot_interfaces").glob("*/*.*[nv]"))  # fmt: skip
    goal, result, feedback = fields(SRC / "emu35_robot_interfaces" / "action" / "Plan.action")
    assert goal == ["instruction", "images", "max_subgoals", "seed", "options_json"]
    assert result == ["subgoals", "keyframes", "success", "message", "plan_json"]
    assert feedback == ["subgoal_index", "text", "keyframe"]
    assert len(fields(SRC / "emu35_robot_interfaces" / "srv" / "Explore.srv")) == 2


def test_node_package_installs_its_files_and_entry_point():
    tree = ast.parse((NODE / "setup.py").read_text())
    text = (NODE / "setup.py").read_text()
    assert "planner_node = emu35_robot_ros.planner_node:main" in text and tree
    assert (NODE / "resource" / "emu35_robot_ros").exists()
    assert list((NODE / "launch").glob("*.launch.py")) == [NODE / "launch" / "planner.launch.py"]
    assert "install_scripts=$base/lib/emu35_robot_ros" in (NODE / "setup.cfg").read_text()


def test_node_reads_every_parameter_of_the_yaml():
    yaml = pytest.importorskip("yaml")
    params = yaml.safe_load((NODE / "config" / "planner.yaml").read_text())["emu35_planner"]["ros__parameters"]
    src = (NODE / "emu35_robot_ros" / "planner_node.py").read_text()
    declared = ast.literal_eval(re.search(r"PARAMETERS = (\{.*?\n\})", src, re.S).group(1))
    assert params == declared
