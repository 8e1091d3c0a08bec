"""A free-running check of a trained decoder on recorded episodes, with no simulator.

Plan from each episode's first view, then compare the generated subgoal texts with the recorded ones, and each
generated key-frame with the recorded key-frame by the blocks it shows: for every palette colour seen in either
image, it agrees when both show it and the blob centroids are within `tol_px` pixels (at 128 px, 3 px is about
3 cm on the table). The first trained decoder had a teacher-forced answer loss of 0.11 while its free-running plans
failed, so this is the number to choose checkpoints by. It runs where the GPU is: the device machines have no
physics engines.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from model.engine import Engine, GenerationRequest
from model.results import collect
from model.sampling import SamplingParams
from sim_envs.keyframe_vision import find_blobs

from .collect import EpisodeRecord
from .sequences import keyframe_per_subgoal


def blob_agreement(generated: np.ndarray | None, truth: np.ndarray, tol_px: float) -> tuple[int, int]:
    """(agreeing colours, colours seen in either image); a missing image agrees with nothing."""
    t = find_blobs(truth)
    g = find_blobs(generated) if generated is not None else {}
    colours = set(t) | set(g)
    ok = sum(c in t and c in g and np.hypot(*np.subtract(t[c].centroid, g[c].centroid)) <= tol_px for c in colours)
    return int(ok), len(colours)


@torch.no_grad()
def probe(
    engine: Engine,
    episodes: list[tuple[EpisodeRecord, np.ndarray]],
    n: int = 32,
    tol_px: float = 3.0,
    seed: int = 0,
    cfg_scale: float | None = None,
    greedy: bool = False,
) -> dict:
    rows = []
    for j, (rec, frames) in enumerate(episodes[:n]):
        kf = keyframe_per_subgoal(rec)
        if kf is None:
            continue
        h, w = frames.shape[1:3]
        req = GenerationRequest(
            task="vla",
            question=rec.instruction,
            images=[Image.fromarray(frames[0])],
            seed=seed + j,
            max_new_tokens=360 * (len(rec.subgoals) + 1),  # a plan that loops is cut, not run to max_len
            cfg_scale=cfg_scale,
            image_sampling=SamplingParams(top_k=1) if greedy else None,
            **({"text_sampling": SamplingParams(top_k=1)} if greedy else {}),
        )
        res = collect(engine.generate(req), "vla", rec.instruction)
        texts = [im.caption.strip() for im in res.images]
        agree = total = 0
        for i, frame_index in enumerate(kf):
            gen = None
            if i < len(res.images):
                gen = np.asarray(res.images[i].image.convert("RGB").resize((w, h), Image.BILINEAR))
            a, t = blob_agreement(gen, frames[frame_index], tol_px)
            agree, total = agree + a, total + t
        rows.append(
            {
                "key": rec.key,
                "texts_exact": texts == rec.subgoals,
                "keyframes": len(res.images),
                "agree": agree,
                "total": total,
            }
        )
    n_rows = max(1, len(rows))
    return {
        "episodes": len(rows),
        "texts_exact": sum(r["texts_exact"] for r in rows) / n_rows,
        "placement_agreement": sum(r["agree"] for r in rows) / max(1, sum(r["total"] for r in rows)),
        "all_blocks_agree": sum(r["agree"] == r["total"] for r in rows) / n_rows,
        "tol_px": tol_px,
        "greedy": greedy,
        "per_episode": rows,
    }
