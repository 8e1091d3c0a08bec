"""A stand-in ROS 2 node for tests/test_ros_dds.py, run as its own process.

It defines the ROS 2 types itself (as rmw_cyclonedds names them), independently of ros_bridge, publishes camera
frames (rgb8 with row padding) and one plan request on `rt/` topics with ROS 2 default QoS, and prints what came back
as one JSON line: subgoal strings, key-frame Image fields, the plan JSON.
"""

import argparse
import json
import sys
import time
from dataclasses import dataclass, field

import cyclonedds.idl.annotations as annotate
import cyclonedds.idl.types as types
import numpy as np
from cyclonedds.core import Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration


@dataclass
@annotate.final
class Time_(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: types.int32 = 0
    nanosec: types.uint32 = 0


@dataclass
@annotate.final
class Header_(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time_ = field(default_factory=Time_)
    frame_id: str = ""


@dataclass
@annotate.final
class Image_(IdlStruct, typename="sensor_msgs::msg::dds_::Image_"):
    header: Header_ = field(default_factory=Header_)
    height: types.uint32 = 0
    width: types.uint32 = 0
    encoding: str = ""
    is_bigendian: types.uint8 = 0
    step: types.uint32 = 0
    data: types.sequence[types.uint8] = field(default_factory=bytes)


@dataclass
@annotate.final
class String_(IdlStruct, typename="std_msgs::msg::dds_::String_"):
    data: str = ""


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--domain", type=int, required=True)
    p.add_argument("--request", required=True, help="plan request JSON")
    p.add_argument("--cancel-after", type=float, default=None, help="publish a cancel this many s after the request")
    p.add_argument("--timeout", type=float, default=40)
    a = p.parse_args()

    dp = DomainParticipant(a.domain)
    qos = Qos(Policy.Reliability.Reliable(duration(seconds=1)), Policy.Durability.Volatile, Policy.History.KeepLast(10))
    cam = DataWriter(dp, Topic(dp, "rt/camera/image_raw", Image_), qos)
    req = DataWriter(dp, Topic(dp, "rt/emu35/plan_request", String_), qos)
    cancel = DataWriter(dp, Topic(dp, "rt/emu35/plan_cancel", String_), qos)
    readers = {
        name: DataReader(dp, Topic(dp, f"rt/emu35/{name}", typ), qos)
        for name, typ in (("subgoal", String_), ("keyframe", Image_), ("plan", String_))
    }
    t0 = time.time()
    writers = (cam, req, cancel)
    while not (all(w.get_matched_subscriptions() for w in writers) and all(
        r.get_matched_publications() for r in readers.values()
    )):  # fmt: skip
        if time.time() - t0 > a.timeout:
            print(json.dumps({"error": "the bridge never matched"}), flush=True)
            return 1
        time.sleep(0.05)
    matched_s = time.time() - t0
    time.sleep(0.5)  # our side saw the bridge's endpoints; give its side the same moment to see ours (volatile QoS)
    types_seen = {  # the type and topic names the bridge's writers announced in discovery
        name: [(d.topic_name, d.type_name) for d in map(r.get_matched_publication_data, r.get_matched_publications())]
        for name, r in readers.items()
    }

    h, w, step = 48, 64, 64 * 3 + 8  # padded rows, as some drivers publish
    rows = np.zeros((h, step), np.uint8)
    rows[:, : w * 3] = np.random.default_rng(0).integers(0, 255, (h, w * 3), dtype=np.uint8)
    frame = Image_(Header_(Time_(1, 2), "camera_optical"), h, w, "rgb8", 0, step, rows.tobytes())
    cam.write(frame)
    time.sleep(0.1)
    req.write(String_(a.request))
    sent = time.time()

    out = {"matched_s": matched_s, "types": types_seen, "subgoal": [], "keyframe": [], "plan": None}
    cancelled = False
    while out["plan"] is None and time.time() - t0 < a.timeout:
        cam.write(frame)
        if a.cancel_after is not None and not cancelled and time.time() - sent > a.cancel_after:
            cancel.write(String_(json.loads(a.request).get("id", "")))
            cancelled = True
        for s in readers["subgoal"].take(16):
            out["subgoal"].append(json.loads(s.data))
        for s in readers["keyframe"].take(16):
            out["keyframe"].append(
                {
                    "frame_id": s.header.frame_id,
                    "stamp_sec": s.header.stamp.sec,
                    "height": s.height,
                    "width": s.width,
                    "encoding": s.encoding,
                    "is_bigendian": s.is_bigendian,
                    "step": s.step,
                    "data_len": len(s.data),
                }
            )
        for s in readers["plan"].take(1):
            out["plan"] = json.loads(s.data)
        time.sleep(0.05)
    out["elapsed_s"] = time.time() - sent
    print(json.dumps(out), flush=True)
    return 0 if out["plan"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
