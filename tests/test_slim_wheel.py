"""benchmarks/slim_wheel.py: the rewritten wheel keeps what was asked, records true hashes and pip installs it."""

import base64
import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("slim_wheel", ROOT / "benchmarks" / "slim_wheel.py")
slim_wheel = importlib.util.module_from_spec(spec)
spec.loader.exec_module(slim_wheel)

FILES = {
    "toy.py": b"import toy_data\n",
    "extra.py": b"raise ImportError\n",
    "toy_data/__init__.py": b"",
    "toy_data/panda/panda.urdf": b"<robot/>\n" * 100,
    "toy_data/humanoid/humanoid.urdf": b"<robot/>\n",
    "toy-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: toy\nVersion: 1.0\n",
    "toy-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    "toy-1.0.dist-info/RECORD": b"",
}


def test_slim_keeps_top_level_metadata_and_kept_globs_and_pip_installs_it(tmp_path):
    wheel = tmp_path / "toy-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in FILES.items():
            z.writestr(name, data)
    out = slim_wheel.slim(wheel, tmp_path / "out", keep=["toy_data/__init__.py", "toy_data/panda/*"], drop=["extra.py"])

    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_LZMA}
        record = z.read("toy-1.0.dist-info/RECORD").decode().splitlines()
        for line in record[:-1]:  # every file but RECORD itself: its true sha256 and size
            name, digest, size = line.split(",")
            data = z.read(name)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert (digest, int(size)) == (f"sha256={want}", len(data))
    assert names == set(FILES) - {"extra.py", "toy_data/humanoid/humanoid.urdf"}
    assert record[-1] == "toy-1.0.dist-info/RECORD,,"

    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site), str(out)]
    subprocess.run(cmd, check=True)
    assert (site / "toy_data" / "panda" / "panda.urdf").read_bytes() == FILES["toy_data/panda/panda.urdf"]
    assert not (site / "toy_data" / "humanoid").exists() and not (site / "extra.py").exists()
