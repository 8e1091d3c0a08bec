"""The DDS-mode bridge: ROS 2 topics in and out over cyclonedds, plans from the gRPC service in between.

Covers what ROS 2 carries over plain topics (camera frames in; a JSON plan request and cancel in; subgoals, key-frames
and the plan out). Actions, services and parameters ride on ROS-specific protocols layered over DDS, so those
need the rclpy node (`emu35_robot_ros`).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass

from cyclonedds.core import InstanceState, Policy, Qos, ReadCondition, SampleState, ViewState, WaitSet
from cyclonedds.domain import DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader, InvalidSample
from cyclonedds.topic import Topic
from cyclonedds.util import duration

from emu35_robot.client import PlannerClient

from ..core import LatestFrame, PlanCall, PlanGoal, PlanResult, plan_to_json
from ..images import ImageConversionError
from .msgs import CompressedImage_, Image_, String_, image_to_idl

log = logging.getLogger("ros_bridge.dds")


@dataclass
class Topics:
    """ROS 2 topic names (without the `rt/` prefix DDS uses for ROS topics)."""

    camera: str = "camera/image_raw"
    camera_compressed: str = "camera/image_raw/compressed"
    request: str = "emu35/plan_request"
    cancel: str = "emu35/plan_cancel"
    subgoal: str = "emu35/subgoal"
    keyframe: str = "emu35/keyframe"
    plan: str = "emu35/plan"


def dds_topic(ros_name: str) -> str:
    """ROS 2 topic "/camera/image_raw" -> DDS topic "rt/camera/image_raw"."""
    return "rt/" + ros_name.strip("/")


def ros_default_qos(depth: int = 10) -> Qos:
    """rmw_qos_profile_default: reliable, volatile, keep last 10."""
    return Qos(
        Policy.Reliability.Reliable(duration(seconds=1)), Policy.Durability.Volatile, Policy.History.KeepLast(depth)
    )


def sensor_data_qos(depth: int = 5) -> Qos:
    """rmw_qos_profile_sensor_data: best effort, so it matches both best-effort and reliable camera publishers."""
    return Qos(Policy.Reliability.BestEffort, Policy.Durability.Volatile, Policy.History.KeepLast(depth))


class DdsBridge:
    """One participant; a DDS thread takes samples, a worker thread runs plan requests one at a time."""

    def __init__(
        self,
        client: PlannerClient,
        domain_id: int = 0,
        topics: Topics | None = None,
        *,
        frame_id: str = "camera",
        image_timeout: float = 5.0,
        qos_depth: int = 10,
    ):
        self.client, self.frame_id, self.image_timeout = client, frame_id, image_timeout
        self.topics = t = topics or Topics()
        self.dp = DomainParticipant(domain_id)
        qos, cam_qos = ros_default_qos(qos_depth), sensor_data_qos()

        def topic(name, typ):
            return Topic(self.dp, dds_topic(name), typ)

        self._readers = {
            "camera": DataReader(self.dp, topic(t.camera, Image_), cam_qos),
            "compressed": DataReader(self.dp, topic(t.camera_compressed, CompressedImage_), cam_qos),
            "request": DataReader(self.dp, topic(t.request, String_), qos),
            "cancel": DataReader(self.dp, topic(t.cancel, String_), qos),
        }
        self.subgoal_writer = DataWriter(self.dp, topic(t.subgoal, String_), qos)
        self.keyframe_writer = DataWriter(self.dp, topic(t.keyframe, Image_), qos)
        self.plan_writer = DataWriter(self.dp, topic(t.plan, String_), qos)
        self.latest = LatestFrame()
        self._requests: queue.Queue[str | None] = queue.Queue()
        self._current: PlanCall | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._waitset = WaitSet(self.dp)
        mask = SampleState.NotRead | ViewState.Any | InstanceState.Any
        for r in self._readers.values():
            self._waitset.attach(ReadCondition(r, mask))
        self._threads = [
            threading.Thread(target=self._take_loop, name="dds-take", daemon=True),
            threading.Thread(target=self._work_loop, name="dds-plan", daemon=True),
        ]

    # ---- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> DdsBridge:
        for th in self._threads:
            th.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._requests.put(None)
        with self._lock:
            if self._current is not None:
                self._current.cancel()
        for th in self._threads:
            th.join(timeout=5)

    def __enter__(self) -> DdsBridge:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- inputs -----------------------------------------------------------------------------------------------
    def _take_loop(self) -> None:
        while not self._stop.is_set():
            self._waitset.wait(duration(milliseconds=100))
            try:
                self._take()
            except Exception:  # one bad sample must not stop the bridge
                log.exception("reading samples failed")

    def _take(self) -> None:
        def valid(name):  # InvalidSample: a state change only (e.g. a publisher went away)
            return [s for s in self._readers[name].take(16) if not isinstance(s, InvalidSample)]

        for s in valid("camera")[-1:] + valid("compressed")[-1:]:
            self.latest.put(s)
        for s in valid("request"):
            self._requests.put(s.data)
        for s in valid("cancel"):
            self._cancel(s.data)

    def _cancel(self, request_id: str) -> None:
        """Cancel the running plan if its id matches (an empty id cancels whatever runs)."""
        with self._lock:
            call = self._current
        if call is not None and request_id.strip() in ("", call.goal.request_id):
            log.info("cancelling plan %s", call.goal.request_id)
            call.cancel()

    # ---- planning ---------------------------------------------------------------------------------------------
    def _work_loop(self) -> None:
        while (text := self._requests.get()) is not None:
            result = self.handle_request(text)
            self.plan_writer.write(String_(result))

    def handle_request(self, text: str) -> str:
        """Run one JSON plan request; returns the plan JSON (success false with a message on any failure)."""
        try:
            goal = PlanGoal.from_json(text, self.latest, self.image_timeout)
        except (ValueError, TypeError, TimeoutError, ImageConversionError) as e:
            rid = _request_id(text)
            log.warning("bad plan request %s: %s", rid, e)
            return json.dumps({"request_id": rid, "success": False, "message": str(e), "subgoals": []})
        call = PlanCall(self.client, goal, self.frame_id)
        with self._lock:
            self._current = call
        try:
            log.info("planning %s: %r", goal.request_id, goal.instruction)
            result: PlanResult = call.run(lambda fb: self._publish_feedback(goal, fb))
        except Exception as e:  # keep serving: report it on the plan topic
            log.exception("plan %s failed", goal.request_id)
            return plan_to_json(goal, None, [], False, f"internal error: {e}")
        finally:
            with self._lock:
                self._current = None
        log.info("plan %s: %s", goal.request_id, result.message)
        return result.plan_json

    def _publish_feedback(self, goal: PlanGoal, fb) -> None:
        self.subgoal_writer.write(String_(fb.to_json(goal.request_id)))
        self.keyframe_writer.write(image_to_idl(fb.keyframe))


def _request_id(text: str) -> str:
    try:
        d = json.loads(text)
        return str(d.get("id", "")) if isinstance(d, dict) else ""
    except ValueError:
        return ""
