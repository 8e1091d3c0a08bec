"""`emu35-robot serve` as a real subprocess, driven by the `plan`, `generate` and `explore` commands."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from model import TextTokenizer


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "emu35_robot", *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.fixture(scope="module", params=[1, 2], ids=["one-rank", "tensor-parallel-2-fp8"])
def served(bundle, tmp_path_factory, request):
    """The server; with --tensor-parallel 2 it spawns a second rank (gloo on CPU) holding half of every block, and
    loads float8 weights (--fp8; on a CPU the quantized numbers are multiplied in float32)."""
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    env = dict(os.environ, EMU35_ROBOT_TOKEN="")
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "emu35_robot", "serve", "--model", str(bundle.root), "--host", "127.0.0.1",
             "--port", "0", "--threads", "1", "--max-len", "1024", "--grace", "10",
             "--tensor-parallel", str(request.param), *(["--fp8"] if request.param == 2 else [])],
            stderr=err, stdout=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        t = time.time()
        while "SERVING" not in log.read_text():
            assert proc.poll() is None and time.time() - t < 60, log.read_text()
            time.sleep(0.1)
        port = int(re.search(r"listening on 127.0.0.1:(\d+)", log.read_text()).group(1))
        yield f"127.0.0.1:{port}", TextTokenizer.from_pretrained(bundle.tokenizer)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert "shutting down" in log.read_text() and "stopped" in log.read_text()
    assert ("tensor parallel: rank 0 of 2" in log.read_text()) == (request.param == 2)
    fp8 = re.search(r"float8 weights in (\d+) projections", log.read_text())
    assert (fp8 is not None and int(fp8.group(1)) == 14) == (request.param == 2)  # 2 blocks x 7 (unfused on a CPU)


def test_cli_plan_generate_explore(served, tmp_path):
    addr, tok = served
    scene = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(scene)
    force = ["--image-size", "3x3", "--seed", "1", "--logit-bias", f"{tok.boi_id}=50"]

    r = cli("plan", "--server", addr, "--image", str(scene), "stack the red block on the blue block",
            "--out", str(tmp_path / "plan"), "--max-subgoals", "2", "--max-new-tokens", "200", *force)  # fmt: skip
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert len(plan["subgoals"]) == 2 and plan["usage"]["reason"] == "max_subgoals"
    for s in plan["subgoals"]:
        assert Image.open(tmp_path / "plan" / s["keyframe"]).size == (48, 48)
    sheet = Image.open(tmp_path / "plan" / "contact_sheet.png")
    assert sheet.width > 2 * 256 and "image 2" in r.stderr  # progress line on stderr

    r = cli("plan", "--server", addr, "--image", str(scene), "stack the red block on the blue block", "--candidates",
            "2", "--out", str(tmp_path / "cons"), "--max-subgoals", "1", "--max-new-tokens", "100", *force)  # fmt: skip
    assert r.returncode == 0, r.stderr
    cons = json.loads((tmp_path / "cons" / "plan.json").read_text())["consensus"]
    assert cons["chosen"] in (0, 1) and len(cons["distances"]) == 2 and len(cons["tokens"]) == 2
    r = cli("plan", "--server", addr, "--image", str(scene), "go", "--candidates", "0", "--out", str(tmp_path / "c0"))
    assert r.returncode == 2 and "argument --candidates: want 1 or more, got 0" in r.stderr

    r = cli("generate", "--server", addr, "--task", "t2i", "a red cube", "--out", str(tmp_path / "gen"),
            "--max-new-tokens", "30", "--jacobi-window", "4", *force)  # fmt: skip
    assert r.returncode == 0, r.stderr
    gen = json.loads((tmp_path / "gen" / "generation.json").read_text())
    assert gen["images"] and (tmp_path / "gen" / "contact_sheet.png").is_file()

    r = cli("explore", "--server", addr, "--image", str(scene), "a kitchen", "--command", "move forward",
            "--command", "turn left", "--out", str(tmp_path / "exp"), "--max-new-tokens", "25", *force)  # fmt: skip
    assert r.returncode == 0, r.stderr
    exp = json.loads((tmp_path / "exp" / "explore.json").read_text())
    assert [t["command"] for t in exp["turns"]] == ["a kitchen", "move forward", "turn left"]
    assert exp["turns"][2]["context_tokens"] > exp["turns"][1]["context_tokens"]

    r = cli("plan", "--server", addr, "--image", str(scene), "", "--out", str(tmp_path / "bad"))
    assert r.returncode == 1 and "INVALID_ARGUMENT: instruction is empty" in r.stderr
