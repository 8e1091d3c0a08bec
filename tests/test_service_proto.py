"""The committed generated code is exactly what `python -m emu35_robot.proto.build` produces."""

import subprocess
import sys

from emu35_robot.proto import build


def test_regenerating_gives_identical_files(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "emu35_robot.proto.build", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=build.ROOT,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    fresh = sorted((tmp_path / build.PROTO_DIR.relative_to(build.ROOT)).glob("*_pb2*"))
    assert len(fresh) == 3 * len(build.proto_files()) == 15
    for f in fresh:
        committed = build.PROTO_DIR / f.name
        assert committed.read_bytes() == f.read_bytes(), f"{f.name} differs: rerun python -m emu35_robot.proto.build"


def test_services_are_importable_and_versioned():
    from emu35_robot.proto import exploration_pb2, generation_pb2, planner_pb2, service_pb2

    names = {
        planner_pb2.DESCRIPTOR.services_by_name["Planner"].full_name,
        generation_pb2.DESCRIPTOR.services_by_name["Generation"].full_name,
        exploration_pb2.DESCRIPTOR.services_by_name["Exploration"].full_name,
        service_pb2.DESCRIPTOR.services_by_name["Service"].full_name,
    }
    assert names == {"emu35.robot.v1.Planner", "emu35.robot.v1.Generation", "emu35.robot.v1.Exploration",
                     "emu35.robot.v1.Service"}  # fmt: skip
