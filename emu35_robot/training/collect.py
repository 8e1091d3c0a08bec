"""Record expert demonstrations for training: the first view, the true key-frame after each subgoal, text.

One compressed `.npz` per episode plus one line in `episodes.jsonl`, both written as each episode ends, so an
interrupted collection keeps its episodes and a re-run skips them. Only the frames a vla sequence needs are
rendered (the view before the plan and the front view at each subgoal boundary), which keeps collection at a few
episodes per second per core. `collect_explore` records the explore format the same way: a seeded scene, a seeded
walk of camera commands, each view and its narration (`explore.jsonl`).
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import multiprocessing.util
import os
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..workers import worker_pool


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
    variant: int = 0  # > 0: the scene of `seed` with another goal (TaskFamily.retarget); key "<env id>/<seed>/<k>"


def record(env, seed: int, size: int, max_steps: int = 1500, variant: int = 0) -> tuple[dict, np.ndarray]:
    """Run the expert once; returns (metadata, frames) where frames[0] is the view before acting. `variant` k > 0:
    the same scene with its k-th other goal (sim_envs.tasks.NoSuchGoal when it has fewer)."""
    from sim_envs.experts import expert_actions

    u = env.unwrapped
    _, info = env.reset(seed=seed, options={"retarget": variant} if variant else None)
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


def _index(path: Path):
    """The JSON records of an index file, in order, up to a torn last line from an interrupted run."""
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            return


def done_keys(out: Path, index_name: str = "episodes.jsonl") -> set[str]:
    keys = set()
    for rec in _index(out / index_name):
        if "key" not in rec:
            break
        keys.add(rec["key"])
    return keys


def collect(
    out: str | Path,
    env_ids: list[str],
    seeds: range,
    size: int = 128,
    progress: bool = True,
    workers: int = 1,
    retarget: int = 0,
) -> int:
    """Record every (env id, seed) not recorded yet, in `workers` processes; returns how many episodes were added.
    `retarget` K: also each scene's first K other goals (`TaskFamily.retarget`: other targets for PlaceInZone, Stack
    and Tower, other orders for ClearTable and SortByColour), the same first view under another instruction or plan;
    goals a scene does not have are skipped."""
    out = Path(out)
    have = done_keys(out)
    todo = [(e, s, k) for e in env_ids for s in seeds for k in range(retarget + 1) if _key(e, s, k) not in have]
    return _run(out, "episodes.jsonl", todo, size, progress, functools.partial(_vla_episode, size=size), workers)


def _key(env_id: str, seed: int, variant: int) -> str:
    return f"{env_id}/{seed}" + (f"/{variant}" if variant else "")


def _vla_episode(
    env, env_id: str, seed: int, variant: int = 0, size: int = 128
) -> tuple[dict | None, np.ndarray | None]:
    from sim_envs.tasks import NoSuchGoal

    try:
        meta, frames = record(env, seed, size, variant=variant)
    except NoSuchGoal:  # this scene (or family) has fewer other goals: nothing to record
        return None, None
    name = f"frames/{env_id.split('/')[-1]}_{seed:06d}" + (f"_{variant}" if variant else "") + ".npz"
    rec = EpisodeRecord(key=_key(env_id, seed, variant), env_id=env_id, seed=seed, file=name, variant=variant, **meta)
    return rec.__dict__, frames


@dataclass
class ExploreRecord:
    key: str  # "<env id>/<seed>"
    env_id: str
    engine: str
    seed: int
    commands: list[str]  # commands[i] moves the camera from view i to view i + 1
    narrations: list[str]  # one per view, the start view's included
    views: list[list[float]]  # (azimuth, elevation, distance) per view
    file: str  # npz with frames [1 + turns, H, W, 3] uint8


def record_explore(env, seed: int, size: int, turns: int) -> tuple[dict, np.ndarray]:
    """A seeded scene and a seeded camera walk over it: views, commands and narrations."""
    from sim_envs.explore import narrate, random_walk

    u = env.unwrapped
    env.reset(seed=seed)
    start, steps = random_walk(np.random.default_rng([seed, 7]), turns)
    views = [start] + [v for _, v in steps]
    frames = np.stack([u.render_camera(v.camera(), size, size) for v in views])
    meta = {
        "engine": u.engine,
        "commands": [c for c, _ in steps],
        "narrations": [narrate(env, v, size) for v in views],
        "views": [[v.azimuth, v.elevation, v.distance] for v in views],
    }
    return meta, frames


_ENVS: dict[str, object] = {}  # this process's environments, one per env id, kept between episodes


def _close_envs() -> None:
    for env in _ENVS.values():
        env.close()
    _ENVS.clear()


def _episode(one, size: int, out: Path, item: tuple) -> dict | None:
    """Record one episode and write its frames (in the worker: compression runs in parallel); returns its record,
    or None when there is nothing to record."""
    import gymnasium as gym

    import sim_envs  # noqa: F401  (registers the ids, sets headless GL)

    env_id, seed, *extra = item
    if env_id not in _ENVS:
        if not _ENVS and multiprocessing.parent_process() is not None:  # a worker: close its envs when it exits
            multiprocessing.util.Finalize(None, _close_envs, exitpriority=10)
        # no passive checker: gymnasium (1.4) marks its first reset checked before calling it, so a first reset that
        # raises NoSuchGoal (a missing retarget) left it without the reset's data and the next step crashed
        _ENVS[env_id] = gym.make(env_id, image_size=size, image_obs=False, disable_env_checker=True)
    rec, frames = one(_ENVS[env_id], env_id, seed, *extra)
    if rec is not None:
        np.savez_compressed(out / rec["file"], frames=frames)
    return rec


def _run(out: Path, index_name: str, todo: list[tuple], size: int, progress: bool, one, workers=1) -> int:
    """Record each (env id, seed, *extra) with ``one(env, env_id, seed, *extra) -> (record dict, frames)`` (a
    module-level function or a partial of one: worker processes receive it; a None record: nothing to record),
    indexing each episode as it arrives. With workers > 1 they
    arrive in the order they finish. On an error no new episode starts, those already recorded are indexed, then the
    first error is raised (a re-run resumes after them)."""
    (out / "frames").mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"collect {index_name}", unit="episode")
    job = functools.partial(_episode, one, size, out)
    error: BaseException | None = None
    added = 0
    pool = None
    if workers > 1 and len(todo) > 1:  # a worker that dies fails the run (BrokenProcessPool), never hangs it
        pool = worker_pool(workers)
    try:
        with open(out / index_name, "a") as index:

            def add(rec: dict | None) -> None:
                nonlocal added
                if rec is not None:
                    index.write(json.dumps(rec) + "\n")
                    index.flush()
                    os.fsync(index.fileno())
                    added += 1
                if bar is not None:
                    bar.update(1)

            if pool is None:
                for item in todo:
                    add(job(item))
            else:
                futures = [pool.submit(job, item) for item in todo]
                for f in as_completed(futures):
                    if f.cancelled():
                        continue
                    try:
                        add(f.result())
                    except Exception as e:
                        if error is None:
                            error = e
                            for g in futures:
                                g.cancel()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        _close_envs()
        if bar is not None:
            bar.close()
    if error is not None:
        raise error
    return added


def collect_explore(
    out: str | Path,
    env_ids: list[str],
    seeds: range,
    size: int = 128,
    turns: int = 4,
    progress: bool = True,
    workers: int = 1,
) -> int:
    """Explore-format episodes (a view, a camera command, the next view with its narration, ...) into
    ``explore.jsonl``; resumes like `collect`."""
    out = Path(out)
    have = done_keys(out, "explore.jsonl")
    todo = [(e, s) for e in env_ids for s in seeds if f"{e}/{s}" not in have]
    one = functools.partial(_explore_episode, size=size, turns=turns)
    return _run(out, "explore.jsonl", todo, size, progress, one, workers)


def _explore_episode(env, env_id: str, seed: int, size: int, turns: int) -> tuple[dict, np.ndarray]:
    meta, frames = record_explore(env, seed, size, turns)
    name = f"frames/explore_{env_id.split('/')[-1]}_{seed:06d}.npz"
    return ExploreRecord(key=f"{env_id}/{seed}", env_id=env_id, seed=seed, file=name, **meta).__dict__, frames


def _load(data_dir: Path, index_name: str, record_type, keep=lambda rec: True) -> list:
    out = []
    for d in _index(data_dir / index_name):
        try:
            rec = record_type(**d)
        except TypeError:  # a record cut off where the JSON still parsed
            break
        if keep(rec):
            with np.load(data_dir / rec.file) as z:
                out.append((rec, z["frames"]))
    return out


def load_explore(data_dir: str | Path) -> list[tuple[ExploreRecord, np.ndarray]]:
    return _load(Path(data_dir), "explore.jsonl", ExploreRecord)


def load(data_dir: str | Path, successful_only: bool = True) -> list[tuple[EpisodeRecord, np.ndarray]]:
    data_dir = Path(data_dir)
    if not (data_dir / "episodes.jsonl").exists():
        raise FileNotFoundError(f"{data_dir}: no episodes.jsonl (record demonstrations with `train collect`)")
    return _load(data_dir, "episodes.jsonl", EpisodeRecord, lambda rec: rec.success or not successful_only)
