"""Rewrite a wheel with only the files a run needs, its shared libraries stripped, LZMA-compressed.

The device tool carries at most 64 MiB a call, the repository included. PyBullet publishes no wheel for the device's
Python 3.12; built here from its sdist (`eval_on_device.sh prepare`) the wheel is 100 MB, mostly debug symbols and
`pybullet_data`'s 142 MB of models we never load. Kept: the modules, the Panda, the metadata. pip reads LZMA zip
members (zipfile does), and the rewritten RECORD lists the new hashes and sizes.

    python benchmarks/slim_wheel.py IN.whl OUT_DIR --keep 'pybullet_data/franka_panda/*' --drop 'eglRenderer*'
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import subprocess
import tempfile
import zipfile
from pathlib import Path


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _wanted(name: str, keep: list[str]) -> bool:
    top = name.split("/", 1)[0]
    if top.endswith(".dist-info") or "/" not in name:  # metadata and top-level modules (the .so files)
        return True
    return any(fnmatch.fnmatch(name, k) for k in keep)


def slim(wheel: Path, out_dir: Path, keep: list[str], drop: list[str]) -> Path:
    out = out_dir / wheel.name
    with zipfile.ZipFile(wheel) as zin, tempfile.TemporaryDirectory() as tmp:
        names = [n for n in zin.namelist() if _wanted(n, keep) and not any(fnmatch.fnmatch(n, d) for d in drop)]
        record_name = next(n for n in names if n.endswith(".dist-info/RECORD"))
        files: dict[str, bytes] = {}
        for name in names:
            if name == record_name:
                continue
            data = zin.read(name)
            if name.endswith(".so"):  # debug symbols are most of the file
                path = Path(tmp) / "lib.so"
                path.write_bytes(data)
                subprocess.run(["strip", "--strip-unneeded", str(path)], check=True)
                data = path.read_bytes()
            files[name] = data
    record = "\n".join([*(_record_line(n, d) for n, d in files.items()), f"{record_name},,"]) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_LZMA) as zout:
        for name, data in files.items():
            zout.writestr(name, data)
        zout.writestr(record_name, record)
    print(f"{out}: {len(files)} files, {out.stat().st_size / 2**20:.1f} MiB (from {wheel.stat().st_size / 2**20:.0f})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--keep", action="append", default=[], help="glob of files inside packages to keep")
    ap.add_argument("--drop", action="append", default=[], help="glob of files to leave out (even top-level ones)")
    args = ap.parse_args()
    slim(args.wheel, args.out_dir, args.keep, args.drop)


if __name__ == "__main__":
    main()
