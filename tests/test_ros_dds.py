"""DDS mode end to end over real DDS on loopback: a separate process acts as a ROS 2 node (ROS type names, `rt/`
topics, default QoS), the bridge runs as `python -m ros_bridge.dds`, the service plans with the tiny random model."""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("cyclonedds", reason="DDS mode needs the `ros` extra: pip install cyclonedds")

pytest.register_assert_rewrite("ros_service")  # also loaded as a plugin below
from ros_service import endless_options, keyframe_options  # noqa: E402

pytest_plugins = ["ros_service"]  # the engine and server fixtures

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = (
    '<CycloneDDS><Domain><General><Interfaces><NetworkInterface name="lo"/></Interfaces>'
    "<AllowMulticast>false</AllowMulticast></General><Discovery><ParticipantIndex>auto</ParticipantIndex>"
    '<Peers><Peer address="127.0.0.1"/></Peers></Discovery></Domain></CycloneDDS>'
)  # unicast discovery to 127.0.0.1 only: no multicast, no traffic off loopback


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dds_env():
    env = dict(os.environ, CYCLONEDDS_URI=LOOPBACK, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return env, random.Random().randint(1, 200)  # a random domain per run keeps parallel runs apart


@pytest.fixture(scope="module")
def bridge(server, dds_env, tmp_path_factory):
    env, domain = dds_env
    log = tmp_path_factory.mktemp("dds") / "bridge.log"
    cmd = [sys.executable, "-m", "ros_bridge.dds", "--server", f"127.0.0.1:{server.port}", "--domain", str(domain)]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=f)
    t = time.time()
    while "ready" not in log.read_text():
        assert proc.poll() is None and time.time() - t < 30, log.read_text()
        time.sleep(0.1)
    yield log
    proc.terminate()
    assert proc.wait(timeout=20) == 0, log.read_text()


def peer(dds_env, bridge, request: dict, *extra: str) -> dict:
    env, domain = dds_env
    cmd = [
        sys.executable,
        str(ROOT / "tests" / "ros_peer.py"),
        "--domain",
        str(domain),
        "--request",
        json.dumps(request),
    ]
    done = subprocess.run(cmd + list(extra), env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr + bridge.read_text()
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_plan_over_ros2_topics(bridge, engine, dds_env):
    options = keyframe_options(engine)
    out = peer(dds_env, bridge, {"id": "r1", "instruction": "stack the red block on the blue block", "max_subgoals": 2,
                         "options": options})  # fmt: skip
    assert out["types"] == {
        "subgoal": [["rt/emu35/subgoal", "std_msgs::msg::dds_::String_"]],
        "keyframe": [["rt/emu35/keyframe", "sensor_msgs::msg::dds_::Image_"]],
        "plan": [["rt/emu35/plan", "std_msgs::msg::dds_::String_"]],
    }
    plan = out["plan"]
    assert plan["success"] and plan["request_id"] == "r1" and plan["usage"]["reason"] == "max_subgoals", plan
    assert [s["index"] for s in out["subgoal"]] == [0, 1] == [s["index"] for s in plan["subgoals"]]
    assert all(s["request_id"] == "r1" for s in out["subgoal"])
    assert len(out["keyframe"]) == 2
    for k in out["keyframe"]:  # the exact sensor_msgs/Image layout: 3x3 tokens of 16 px, rgb8, unpadded rows
        assert (k["height"], k["width"], k["encoding"], k["is_bigendian"]) == (48, 48, "rgb8", 0)
        assert k["step"] == 3 * k["width"] and k["data_len"] == k["step"] * k["height"]
        assert k["frame_id"] == "camera" and k["stamp_sec"] > 1_600_000_000


def test_cancel_and_bad_requests_over_ros2_topics(bridge, engine, server, dds_env):
    endless = endless_options(engine)
    cancelled = server.metrics.requests.labels("Plan", "CANCELLED")
    before = cancelled._value.get()
    out = peer(
        dds_env, bridge, {"id": "c1", "instruction": "wipe the table", "options": endless}, "--cancel-after", "0.5"
    )
    assert out["plan"]["request_id"] == "c1" and not out["plan"]["success"], out["plan"]
    assert out["plan"]["message"] == "cancelled" and cancelled._value.get() == before + 1  # the gRPC stream itself
    out = peer(dds_env, bridge, {"id": "b1", "instruction": "x", "options": {"temperature": 2}})
    assert not out["plan"]["success"] and "unknown option" in out["plan"]["message"]
