"""Episode videos: the camera view beside the running plan's key-frames, with the current subgoal's caption.

mp4 (H.264 via imageio's ffmpeg or pyav plugin) when one is installed, else an animated GIF (Pillow), so a
report always has something to play; the record says which format was written.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from sim_envs.executors import Subgoal

VIEW = 192  # camera panel side, pixels
THUMB = 64  # key-frame thumbnail side
FPS = 10


def _text(img: np.ndarray, s: str, org: tuple[int, int], scale: float = 0.38, colour=(20, 20, 20)) -> None:
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _fit(s: str, width_px: int, scale: float = 0.38) -> str:
    while s and cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width_px:
        s = s[:-2]
    return s


def compose(frame: np.ndarray, plan: list[Subgoal], current: int, header: str) -> np.ndarray:
    """One video frame: camera view on the left, the plan's key-frames (current one framed) on the right."""
    cols = max(1, min(4, len(plan)))
    rows = max(1, -(-len(plan) // cols))
    right_w = cols * (THUMB + 6) + 6
    h, w = 24 + max(VIEW, rows * (THUMB + 18)) + 22, VIEW + 12 + right_w
    img = np.full((h, w, 3), 245, np.uint8)
    img[24 : 24 + VIEW, 4 : 4 + VIEW] = cv2.resize(frame, (VIEW, VIEW), interpolation=cv2.INTER_NEAREST)
    _text(img, _fit(header, w - 8), (4, 16))
    for i, sg in enumerate(plan):
        x, y = VIEW + 12 + (i % cols) * (THUMB + 6), 24 + (i // cols) * (THUMB + 18)
        if sg.keyframe is not None:
            img[y : y + THUMB, x : x + THUMB] = cv2.resize(sg.keyframe, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
        else:
            _text(img, "no image", (x + 4, y + THUMB // 2))
        if i == current:
            cv2.rectangle(img, (x - 2, y - 2), (x + THUMB + 1, y + THUMB + 1), (230, 60, 30), 2)
        _text(img, str(i + 1), (x, y + THUMB + 12), 0.35)
    caption = plan[current].text if 0 <= current < len(plan) else ("(plan finished)" if plan else "(empty plan)")
    _text(img, _fit(f"subgoal {current + 1}: {caption}" if current >= 0 else caption, w - 8), (4, h - 7))
    return img


@lru_cache(maxsize=1)
def mp4_available() -> bool:
    """imageio writes mp4 through the imageio-ffmpeg or the pyav plugin; neither ships with imageio itself."""
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("imageio_ffmpeg", "av"))


def write_episode_video(
    path_stem: Path, frames: list[tuple[np.ndarray, tuple[int, int]]], plans: list[list[Subgoal]], spec, instruction
) -> Path:
    """Write ``path_stem.mp4`` (or ``.gif``) and return the path written."""
    import imageio.v3 as iio

    path_stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for frame, (p, i) in frames:
        header = f"{spec.task} {spec.engine} seed {spec.seed} | {spec.planner} | plan {p + 1}: {instruction}"
        out.append(compose(frame, plans[p] if p < len(plans) else [], i, header))
    if not out:
        out = [np.full((64, 64, 3), 245, np.uint8)]
    hw = np.array([f.shape[:2] for f in out]).max(axis=0)
    hw += -hw % 16  # H.264 macro blocks: 16-pixel multiples, so the writer need not resize (and warn)
    stack = np.stack([np.pad(f, ((0, hw[0] - f.shape[0]), (0, hw[1] - f.shape[1]), (0, 0)), constant_values=245)
                      for f in out])  # fmt: skip
    if mp4_available():
        path = path_stem.parent / f"{path_stem.name}.mp4"
        iio.imwrite(path, stack, extension=".mp4", fps=FPS)
    else:
        path = path_stem.parent / f"{path_stem.name}.gif"
        iio.imwrite(path, stack, extension=".gif", duration=int(1000 / FPS), loop=0)
    return path
