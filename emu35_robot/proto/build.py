"""Regenerate the emu35.robot.v1 Python code from the .proto files with grpcio-tools.

    python -m emu35_robot.proto.build            # rewrite the committed *_pb2.py, *_pb2.pyi, *_pb2_grpc.py
    python -m emu35_robot.proto.build --out DIR  # write them under DIR instead (the reproducibility test does this)

Protos are compiled from the repository root (`-I <root>`), so the generated imports are
`from emu35_robot.proto.emu35.robot.v1 import common_pb2` and work wherever the package is installed. Output depends
only on the .proto files and the grpcio-tools version, so regenerating with the same version gives identical files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent / "emu35" / "robot" / "v1"
ROOT = Path(__file__).resolve().parents[2]  # the directory that holds emu35_robot/


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def build(out: str | Path | None = None) -> list[Path]:
    """Run protoc on every .proto; returns the files written (under `out`, default the repository root)."""
    import grpc_tools
    from grpc_tools import protoc

    out = Path(out) if out is not None else ROOT
    out.mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    rel = [str(p.relative_to(ROOT)) for p in proto_files()]
    args = ["grpc_tools.protoc", f"-I{ROOT}", f"-I{include}"]
    args += [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *rel]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {rel}")
    gen = out / PROTO_DIR.relative_to(ROOT)
    return sorted(p for p in gen.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="output root (default: the repository root, in place)")
    args = p.parse_args(argv)
    for f in build(args.out):
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
