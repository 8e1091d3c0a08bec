"""The rclpy planner node against a live service. Runs where ROS 2 is sourced and the workspace is built
(`colcon build` in ros_bridge/ros2_ws, then `source install/setup.bash`); skipped elsewhere (CI has no ROS)."""

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

rclpy = pytest.importorskip("rclpy", reason="rclpy is not importable: ROS 2 is not installed/sourced here")
pytest.importorskip(
    "emu35_robot_interfaces.action", reason="emu35_robot_interfaces is not built: colcon build ros_bridge/ros2_ws"
)

from emu35_robot_interfaces.action import Plan  # noqa: E402
from emu35_robot_interfaces.srv import Explore  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

pytest.register_assert_rewrite("ros_service")  # also loaded as a plugin below
from ros_service import endless_options, keyframe_options  # noqa: E402
from tiny import camera_image  # noqa: E402

pytest_plugins = ["ros_service"]  # the engine and server fixtures

from ros_bridge.images import numpy_to_image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ros_bridge" / "ros2_ws" / "src" / "emu35_robot_ros"))
from emu35_robot_ros.planner_node import PlannerNode, to_ros_image  # noqa: E402


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ros(server):
    rclpy.init()
    node = PlannerNode(parameter_overrides=[Parameter("server", value=f"127.0.0.1:{server.port}")])
    user = rclpy.create_node("emu35_test_user")
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    executor.add_node(user)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    yield node, user
    executor.shutdown()
    node.close()
    node.destroy_node()
    user.destroy_node()
    rclpy.try_shutdown()


def wait(future, timeout=60.0):
    t = time.time()
    while not future.done():
        assert time.time() - t < timeout, "timed out"
        time.sleep(0.02)
    return future.result()


def test_plan_action_streams_feedback_with_keyframes(ros, engine):
    node, user = ros
    client = ActionClient(user, Plan, "emu35/plan")
    assert client.wait_for_server(timeout_sec=10)
    goal = Plan.Goal(instruction="stack the red block on the blue block", max_subgoals=2,
                     options_json=json.dumps(keyframe_options(engine)))  # fmt: skip
    goal.images = [to_ros_image(numpy_to_image(np.asarray(camera_image())))]
    feedback = []
    handle = wait(client.send_goal_async(goal, feedback_callback=lambda f: feedback.append(f.feedback)))
    assert handle.accepted
    res = wait(handle.get_result_async()).result
    assert res.success and len(res.subgoals) == len(res.keyframes) == 2, res.message
    assert [f.subgoal_index for f in feedback] == [0, 1]
    k = res.keyframes[0]
    assert (k.height, k.width, k.encoding, k.step, len(k.data)) == (48, 48, "rgb8", 144, 48 * 144)
    assert json.loads(res.plan_json)["usage"]["reason"] == "max_subgoals"


def test_plan_goal_uses_the_latest_camera_frame_and_cancels(ros, engine, server):
    from sensor_msgs.msg import Image

    node, user = ros
    cam = user.create_publisher(Image, "camera/image_raw", 10)
    cam.publish(to_ros_image(numpy_to_image(np.asarray(camera_image()))))
    client = ActionClient(user, Plan, "emu35/plan")
    goal = Plan.Goal(instruction="wipe the table", options_json=json.dumps(endless_options(engine)))
    handle = wait(client.send_goal_async(goal))
    time.sleep(1.0)
    wait(handle.cancel_goal_async())
    res = wait(handle.get_result_async())
    assert res.status == 5 and res.result.message == "cancelled"  # GoalStatus.STATUS_CANCELED


def test_explore_service_keeps_a_session(ros, engine):
    node, user = ros
    cli = user.create_client(Explore, "emu35/explore")
    assert cli.wait_for_service(timeout_sec=10)
    opts = json.dumps(keyframe_options(engine, size=(2, 2), max_new_tokens=30))
    start = Explore.Request(scene="a kitchen", options_json=opts)
    start.images = [to_ros_image(numpy_to_image(np.asarray(camera_image())))]
    first = wait(cli.call_async(start))
    assert first.success and first.session_id and first.turn == 0, first.message
    turn = wait(cli.call_async(Explore.Request(session_id=first.session_id, command="move forward")))
    assert turn.success and turn.turn == 1 and turn.context_tokens > first.context_tokens
    closed = wait(cli.call_async(Explore.Request(session_id=first.session_id, close=True)))
    assert closed.success
