"""Record expert demonstrations for training: the first view, the true key-frame after each subgoal, text.

One compressed `.npz` per episode plus one line in `episodes.jsonl`, both written as each episode ends, so an
interrupted collection keeps its episodes and a re-run skips them. Only the frames a vla sequence needs are
rendered (the view before the plan and the front view at each subgoal boundary), which keeps collection at a few
episodes per second per core.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class EpisodeRecord:
    key: str  # "<env id>/<seed>"
    env_id: str
    family: str
    engine: str
    seed: int
    instruction: str
    subgoals: list[str]
    keyframe_subgoals: list[int]  # subgoal index of each frames[1:] entry
    success: bool
    steps: int
    file: str  # npz with frames [1 + n_keyframes, H, W, 3] uint8


def record(env, seed: int, size: int, max_steps: int = 1500) -> tuple[dict, np.ndarray]:
    """Run the expert once; returns (metadata, frames) where frames[0] is the view before acting."""
    from sim_envs.experts import expert_actions

    u = env.unwrapped
    _, info = env.reset(seed=seed)
    frames = [u.render_camera("front", size, size)]
    kf_sub: list[int] = []
    steps = 0
    for action in expert_actions(env):
        _, _, terminated, truncated, info = env.step(action)
        steps += 1
        for k in info["subgoals_completed_now"]:
            frames.append(u.render_camera("front", size, size))
            kf_sub.append(int(k))
        if terminated or truncated or steps >= max_steps:
            break
    meta = {
        "family": info["family"],
        "engine": info["engine"],
        "instruction": info["instruction"],
        "subgoals": list(info["subgoals"]),
        "keyframe_subgoals": kf_sub,
        "success": bool(info["success"]),
        "steps": steps,
    }
    return meta, np.stack(frames)


def done_keys(out: Path) -> set[str]:
    path = out / "episodes.jsonl"
    keys = set()
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                keys.add(json.loads(line)["key"])
            except (json.JSONDecodeError, KeyError):
                break  # a torn last line from an interrupted run
    return keys


def collect(out: str | Path, env_ids: list[str], seeds: range, size: int = 128, progress: bool = True) -> int:
    """Record every (env id, seed) not recorded yet; returns how many episodes were added."""
    import gymnasium as gym

    import sim_envs  # noqa: F401  (registers the ids, sets headless GL)

    out = Path(out)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    have = done_keys(out)
    todo = [(e, s) for e in env_ids for s in seeds if f"{e}/{s}" not in have]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="collect", unit="episode")
    envs: dict[str, object] = {}
    added = 0
    with open(out / "episodes.jsonl", "a") as index:
        for env_id, seed in todo:
            if env_id not in envs:
                envs[env_id] = gym.make(env_id, image_size=size, image_obs=False)
            meta, frames = record(envs[env_id], seed, size)
            name = f"{env_id.split('/')[-1]}_{seed:06d}.npz"
            np.savez_compressed(out / "frames" / name, frames=frames)
            rec = EpisodeRecord(key=f"{env_id}/{seed}", env_id=env_id, seed=seed, file=f"frames/{name}", **meta)
            index.write(json.dumps(rec.__dict__) + "\n")
            index.flush()
            os.fsync(index.fileno())
            added += 1
            if bar is not None:
                bar.update(1)
    for env in envs.values():
        env.close()
    if bar is not None:
        bar.close()
    return added


def load(data_dir: str | Path, successful_only: bool = True) -> list[tuple[EpisodeRecord, np.ndarray]]:
    data_dir = Path(data_dir)
    out = []
    for line in (data_dir / "episodes.jsonl").read_text().splitlines():
        try:
            rec = EpisodeRecord(**json.loads(line))
        except (json.JSONDecodeError, TypeError):
            break
        if successful_only and not rec.success:
            continue
        with np.load(data_dir / rec.file) as z:
            out.append((rec, z["frames"]))
    return out
