"""Simulation speed per engine: env steps/s (physics + control, no rendering) and rendered frames/s.

Usage: python benchmarks/sim_speed.py [--size 128] [--steps 3000] [--frames 300] [--write]
With --write the "Simulation speed" section of benchmarks/RESULTS.md is replaced by the results.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gymnasium as gym  # noqa: E402

import sim_envs  # noqa: E402  (sets MUJOCO_GL before mujoco is imported)

FAMILY = "SortByColour"  # the fullest scene: 3 blocks and 3 zones
RESULTS = Path(__file__).with_name("RESULTS.md")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def bench_engine(engine: str, size: int, steps: int, frames: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    env = gym.make(sim_envs.env_id(FAMILY, engine), image_obs=False, image_size=size)
    u = env.unwrapped
    env.reset(seed=0)
    actions = rng.uniform(-1, 1, (steps, 5)).astype(np.float32)
    t, elapsed = 0, 0.0
    while t < steps:  # re-seed every 100 steps so random actions do not pin the arm at a workspace corner
        env.reset(seed=t)
        t0 = time.perf_counter()
        for a in actions[t : t + 100]:
            u.step(a)
        elapsed += time.perf_counter() - t0
        t += 100
    out = {"env_steps_per_s": steps / elapsed}
    t0 = time.perf_counter()
    for s in range(20):
        env.reset(seed=s)
    out["resets_per_s"] = 20 / (time.perf_counter() - t0)
    env.reset(seed=0)
    for _ in range(10):
        u.step(actions[0])
    for cam in ("front", "wrist"):
        u.render_camera(cam, size, size)  # warm-up (context creation)
        t0 = time.perf_counter()
        for _ in range(frames):
            u.render_camera(cam, size, size)
        out[f"{cam}_renders_per_s"] = frames / (time.perf_counter() - t0)
    env.close()
    img_env = gym.make(sim_envs.env_id(FAMILY, engine), image_size=size)  # both cameras in every observation
    img_env.reset(seed=0)
    n = max(frames // 2, 20)
    t0 = time.perf_counter()
    for a in actions[:n]:
        img_env.unwrapped.step(a)
    out["image_obs_steps_per_s"] = n / (time.perf_counter() - t0)
    img_env.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args()
    results = {e: bench_engine(e, args.size, args.steps, args.frames) for e in sim_envs.ENGINES}
    from importlib.metadata import version

    import mujoco

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y")
    cmd = "python benchmarks/sim_speed.py " + " ".join(sys.argv[1:])
    lines = [
        "## Simulation speed",
        "",
        f"- Machine: {cpu_name()}, {os.cpu_count()} cores, no GPU; Python {platform.python_version()}, "
        f"mujoco {mujoco.__version__} (MUJOCO_GL={os.environ.get('MUJOCO_GL')}), pybullet {version('pybullet')} "
        "(TinyRenderer)",
        f"- Date: {date}",
        f"- Command: `{cmd.strip()}`",
        f"- Scene: `{FAMILY}` (3 blocks, 3 zones; PyBullet with the Panda), control period 0.04 s "
        "(MuJoCo 20 x 2 ms substeps, PyBullet 8 x 5 ms), random actions; images {0}x{0}".format(args.size),
        "",
        "| engine | env steps/s (no render) | front renders/s | wrist renders/s | steps/s, both cameras | resets/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for e, r in results.items():
        lines.append(
            f"| {e} | {r['env_steps_per_s']:,.0f} | {r['front_renders_per_s']:.1f} | {r['wrist_renders_per_s']:.1f} "
            f"| {r['image_obs_steps_per_s']:.1f} | {r['resets_per_s']:.1f} |"
        )
    lines.append("")
    section = "\n".join(lines)
    print(section)
    if args.write:
        text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
        pattern = re.compile(r"^## Simulation speed\n.*?(?=^## |\Z)", re.S | re.M)
        text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
