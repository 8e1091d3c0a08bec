"""The emu35 planner node: ROS 2 actions and services in front of the emu35-robot gRPC planning service.

- action `emu35/plan` (emu35_robot_interfaces/action/Plan): feedback per subgoal with its key-frame; cancel stops the
  gRPC stream; a goal without images uses the latest camera frame.
- action `emu35/generate` (Generate) and service `emu35/explore` (Explore, sessions by id).
- subscribes to the camera (sensor_msgs/Image and CompressedImage); publishes key-frames (Image) and the plan as JSON
  (std_msgs/String).

All conversion and request logic lives in `ros_bridge.core` (shared with the DDS mode); this file only wires rclpy.
"""

from __future__ import annotations

import array
import os
import threading
import time

import rclpy
from emu35_robot_interfaces.action import Generate, Plan
from emu35_robot_interfaces.srv import Explore
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from emu35_robot.client import TASKS, PlannerClient
from ros_bridge.core import ExploreSessions, GenerateCall, GenerateGoal, LatestFrame, PlanCall, PlanGoal
from ros_bridge.images import ImageMsg

PARAMETERS = {
    "server": "localhost:50051",
    "token": "",
    "tls": False,
    "tls_ca": "",
    "timeout": 600.0,
    "camera_topic": "camera/image_raw",
    "compressed_topic": "camera/image_raw/compressed",
    "keyframe_topic": "emu35/keyframe",
    "plan_topic": "emu35/plan",
    "action_name": "emu35/plan",
    "generate_action_name": "emu35/generate",
    "explore_service": "emu35/explore",
    "frame_id": "camera",
    "image_timeout": 5.0,
    "camera_qos": "sensor_data",
    "qos_depth": 10,
}


def to_ros_image(m: ImageMsg) -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(m.header.stamp.sec), int(m.header.stamp.nanosec)
    msg.header.frame_id = m.header.frame_id
    msg.height, msg.width, msg.encoding = m.height, m.width, m.encoding
    msg.is_bigendian, msg.step = m.is_bigendian, m.step
    msg.data = array.array("B", m.data)  # an array('B') is taken as is; a bytes object would be checked per element
    return msg


def finish(goal_handle, success: bool, cancelled: bool) -> None:
    """Set the terminal state. A cancel reaches us (the stream ends) just before rclpy marks the goal CANCELING."""
    if cancelled:
        deadline = time.monotonic() + 2.0
        while not goal_handle.is_cancel_requested and time.monotonic() < deadline:
            time.sleep(0.01)
        if goal_handle.is_cancel_requested:
            goal_handle.canceled()
            return
    if success:
        goal_handle.succeed()
    else:
        goal_handle.abort()


class PlannerNode(Node):
    def __init__(self, **node_kw):
        super().__init__("emu35_planner", **node_kw)
        for name, default in PARAMETERS.items():
            self.declare_parameter(name, default)
        p = {name: self.get_parameter(name).value for name in PARAMETERS}
        self.frame_id, self.image_timeout = p["frame_id"], float(p["image_timeout"])
        token = p["token"] or os.environ.get("EMU35_ROBOT_TOKEN") or None
        self.client = PlannerClient(p["server"], token=token, tls=p["tls_ca"] or p["tls"], timeout=p["timeout"])
        self.latest = LatestFrame()
        self.explore_sessions = ExploreSessions(self.client, self.frame_id)
        self._calls: dict[bytes, PlanCall | GenerateCall] = {}
        self._lock = threading.Lock()
        group = ReentrantCallbackGroup()  # goals, cancels and camera frames run concurrently

        depth = int(p["qos_depth"])
        cam_qos = qos_profile_sensor_data if p["camera_qos"] == "sensor_data" else QoSProfile(depth=depth)
        self.create_subscription(Image, p["camera_topic"], self.latest.put, cam_qos, callback_group=group)
        if p["compressed_topic"]:
            self.create_subscription(
                CompressedImage, p["compressed_topic"], self.latest.put, cam_qos, callback_group=group
            )
        out_qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        self.keyframe_pub = self.create_publisher(Image, p["keyframe_topic"], out_qos)
        self.plan_pub = self.create_publisher(String, p["plan_topic"], out_qos)

        self.plan_server = ActionServer(
            self,
            Plan,
            p["action_name"],
            execute_callback=self._execute_plan,
            goal_callback=lambda g: GoalResponse.ACCEPT if g.instruction.strip() else GoalResponse.REJECT,
            cancel_callback=self._cancel,
            callback_group=group,
        )
        self.generate_server = ActionServer(
            self,
            Generate,
            p["generate_action_name"],
            execute_callback=self._execute_generate,
            goal_callback=lambda g: GoalResponse.ACCEPT if g.task in TASKS else GoalResponse.REJECT,
            cancel_callback=self._cancel,
            callback_group=group,
        )
        self.explore_service = self.create_service(Explore, p["explore_service"], self._explore, callback_group=group)
        self.get_logger().info(f"emu35 planner: service {p['server']}, camera {p['camera_topic']}")

    # ---- cancel -----------------------------------------------------------------------------------------------
    def _cancel(self, goal_handle) -> CancelResponse:
        with self._lock:
            call = self._calls.get(bytes(goal_handle.goal_id.uuid))
        if call is not None:
            call.cancel()  # ends the gRPC stream; the execute callback then reports CANCELED
        return CancelResponse.ACCEPT

    def _track(self, goal_handle, call) -> bytes:
        key = bytes(goal_handle.goal_id.uuid)
        with self._lock:
            self._calls[key] = call
        if goal_handle.is_cancel_requested:  # cancelled while we were waiting for a camera frame
            call.cancel()
        return key

    def _untrack(self, key: bytes) -> None:
        with self._lock:
            self._calls.pop(key, None)

    # ---- Plan -------------------------------------------------------------------------------------------------
    def _execute_plan(self, goal_handle):
        result = Plan.Result()
        try:
            goal = PlanGoal.from_msg(goal_handle.request, self.latest, self.image_timeout)
            call = PlanCall(self.client, goal, self.frame_id)
        except (ValueError, TypeError, TimeoutError) as e:
            result.success, result.message = False, str(e)
            goal_handle.abort()
            return result

        def on_feedback(fb):
            msg = Plan.Feedback()
            msg.subgoal_index, msg.text, msg.keyframe = fb.subgoal_index, fb.text, to_ros_image(fb.keyframe)
            goal_handle.publish_feedback(msg)
            self.keyframe_pub.publish(msg.keyframe)

        key = self._track(goal_handle, call)
        try:
            r = call.run(on_feedback)
        finally:
            self._untrack(key)
        result.subgoals = r.subgoals
        result.keyframes = [to_ros_image(k) for k in r.keyframes]
        result.success, result.message, result.plan_json = r.success, r.message, r.plan_json
        self.plan_pub.publish(String(data=r.plan_json))
        self.get_logger().info(f"plan {goal.instruction!r}: {r.message}")
        finish(goal_handle, r.success, r.cancelled)
        return result

    # ---- Generate ---------------------------------------------------------------------------------------------
    def _execute_generate(self, goal_handle):
        result = Generate.Result()
        try:
            call = GenerateCall(self.client, GenerateGoal.from_msg(goal_handle.request), self.frame_id)
        except (ValueError, TypeError) as e:
            result.success, result.message = False, str(e)
            goal_handle.abort()
            return result

        def on_feedback(fb):
            msg = Generate.Feedback()
            msg.image_index, msg.caption, msg.image = fb.image_index, fb.caption, to_ros_image(fb.image)
            goal_handle.publish_feedback(msg)

        key = self._track(goal_handle, call)
        try:
            r = call.run(on_feedback)
        finally:
            self._untrack(key)
        result.text, result.images, result.captions = r.text, [to_ros_image(i) for i in r.images], r.captions
        result.success, result.message = r.success, r.message
        finish(goal_handle, r.success, r.cancelled)
        return result

    # ---- Explore ----------------------------------------------------------------------------------------------
    def _explore(self, request, response):
        r = self.explore_sessions.handle(request, self.latest, self.image_timeout)
        response.success, response.message, response.session_id = r.success, r.message, r.session_id
        response.turn, response.narration = r.turn, r.narration
        response.views = [to_ros_image(v) for v in r.views]
        response.context_tokens, response.context_limit = r.context_tokens, r.context_limit
        return response

    def close(self) -> None:
        with self._lock:
            calls = list(self._calls.values())
        for c in calls:
            c.cancel()
        self.explore_sessions.close_all()
        self.client.close()


def main(args=None) -> None:
    rclpy.init(args=args)
    node = PlannerNode()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.close()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
