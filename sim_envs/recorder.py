"""Demonstration recorder and reader.

On-disk format (one directory per episode; everything is appended as it happens, so an interrupted recording
keeps every finished step)::

    episode_dir/
      meta.json            env id, family, engine, seed, instruction, subgoals, image size, cameras, action
                           space; "status" is "recording" until close() rewrites it as "complete" (+ summary)
      steps.jsonl          one JSON object per step t: {"t", "action" [5], "proprio" [6], "reward",
                           "success", "subgoal_index", "subgoals_completed" [k...]}; flushed per line
      frames/<camera>/<t:06d>.png   the observation the action of step t was taken from (lossless PNG)
      frames/<camera>/final.png     the observation after the last action
      keyframes/<k:02d>.png          front frame right after subgoal k was reached (the true key-frame)
      keyframes.jsonl      one line per key-frame: {"index", "step", "text", "path"}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

FORMAT_VERSION = 1


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def read_png(path: str | Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _read_jsonl(path: Path) -> list[dict]:
    """Read complete lines; a torn last line (interrupted write) is dropped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


class EpisodeWriter:
    """Writes one episode incrementally; use as a context manager or call :meth:`close`."""

    def __init__(self, directory: str | Path, meta: dict[str, Any], cameras: tuple[str, ...] = ("front",)) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=False)
        self.cameras = tuple(cameras)
        self.meta = {"format_version": FORMAT_VERSION, "status": "recording", "cameras": list(self.cameras), **meta}
        _write_json_atomic(self.dir / "meta.json", self.meta)
        self._steps = open(self.dir / "steps.jsonl", "a", buffering=1)  # noqa: SIM115 - closed in close()
        self._keys = open(self.dir / "keyframes.jsonl", "a", buffering=1)  # noqa: SIM115
        self.num_steps = 0

    def add_step(self, frames: dict[str, np.ndarray], action, proprio, reward: float, info: dict[str, Any]) -> None:
        t = self.num_steps
        for cam in self.cameras:
            _write_png(self.dir / "frames" / cam / f"{t:06d}.png", frames[cam])
        rec = {
            "t": t,
            "action": [float(x) for x in np.asarray(action).ravel()],
            "proprio": [float(x) for x in np.asarray(proprio).ravel()],
            "reward": float(reward),
            "success": bool(info.get("success", False)),
            "subgoal_index": int(info.get("subgoal_index", 0)),
            "subgoals_completed": [int(k) for k in info.get("subgoals_completed_now", [])],
        }
        self._steps.write(json.dumps(rec) + "\n")
        self._steps.flush()
        self.num_steps += 1

    def add_keyframe(self, index: int, image: np.ndarray, text: str) -> None:
        rel = f"keyframes/{index:02d}.png"
        _write_png(self.dir / rel, image)
        self._keys.write(json.dumps({"index": index, "step": self.num_steps, "text": text, "path": rel}) + "\n")
        self._keys.flush()

    def close(self, final_frames: dict[str, np.ndarray] | None = None, **summary: Any) -> None:
        for cam, img in (final_frames or {}).items():
            _write_png(self.dir / "frames" / cam / "final.png", img)
        self._steps.close()
        self._keys.close()
        self.meta.update(status="complete", num_steps=self.num_steps, **summary)
        _write_json_atomic(self.dir / "meta.json", self.meta)

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc) -> None:
        if not self._steps.closed:
            self.close()


@dataclass
class Episode:
    """A recorded episode read back; frames load lazily from PNG."""

    dir: Path
    meta: dict[str, Any]
    steps: list[dict[str, Any]]
    keyframe_records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def actions(self) -> np.ndarray:
        return np.array([s["action"] for s in self.steps], dtype=np.float32).reshape(-1, 5)

    def frame(self, camera: str, t: int | str) -> np.ndarray:
        name = t if isinstance(t, str) else f"{t:06d}"
        return read_png(self.dir / "frames" / camera / f"{name}.png")

    def frames(self, camera: str = "front") -> np.ndarray:
        return np.stack([self.frame(camera, s["t"]) for s in self.steps])

    def keyframes(self) -> list[tuple[dict[str, Any], np.ndarray]]:
        return [(k, read_png(self.dir / k["path"])) for k in self.keyframe_records]


def read_episode(directory: str | Path) -> Episode:
    d = Path(directory)
    meta = json.loads((d / "meta.json").read_text())
    steps = _read_jsonl(d / "steps.jsonl")
    cams = meta.get("cameras", [])
    # a step counts only once its frames are on disk (a crash may land between the PNG and the JSON line)
    steps = [s for s in steps if all((d / "frames" / c / f"{s['t']:06d}.png").exists() for c in cams)]
    keys = [k for k in _read_jsonl(d / "keyframes.jsonl") if (d / k["path"]).exists()]
    return Episode(d, meta, steps, keys)


def record_expert_episode(env, directory: str | Path, seed: int, cameras: tuple[str, ...] = ("front",)) -> Episode:
    """Run the scripted expert on one seed and record it (frames rendered at the env's image size).

    ``cameras=()`` records actions and key-frames only (rendering just at subgoal boundaries), which is what
    a key-frame executor needs and is much faster.
    """
    from .experts import expert_actions

    u = env.unwrapped
    obs, info = env.reset(seed=seed)

    def frames_of(o: dict) -> dict[str, np.ndarray]:
        return {c: o[c] if c in o else u.render_camera(c) for c in cameras}  # render only what is recorded

    meta = {
        "env_id": env.spec.id if env.spec else None,
        "family": info["family"],
        "engine": info["engine"],
        "seed": seed,
        "instruction": info["instruction"],
        "subgoals": info["subgoals"],
        "image_size": [u.height, u.width],
        "action_space": {"low": env.action_space.low.tolist(), "high": env.action_space.high.tolist()},
        "control_dt": u.backend.control_dt,
    }
    writer = EpisodeWriter(directory, meta, cameras)
    frames = frames_of(obs)
    for action in expert_actions(env):
        proprio = obs["proprio"]
        obs, reward, terminated, truncated, info = env.step(action)
        writer.add_step(frames, action, proprio, reward, info)
        frames = frames_of(obs)
        for k in info["subgoals_completed_now"]:
            kf = frames["front"] if "front" in frames else u.render_camera("front")
            writer.add_keyframe(k, kf, info["subgoals"][k])
        if terminated or truncated:
            break
    writer.close(final_frames=frames, success=bool(info["success"]), subgoal_index=int(info["subgoal_index"]))
    return read_episode(directory)
