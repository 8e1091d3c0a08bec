"""A free-running check of a trained decoder on recorded episodes, with no simulator.

Plan from each episode's first view, then compare the generated subgoal texts with the recorded ones, and each
generated key-frame with the recorded key-frame by the blocks it shows: for every palette colour seen in either
image, it agrees when both show it and the blob centroids are within `tol_px` pixels (at 128 px, 3 px is about
3 cm on the table). Both compare with the expert's order, where another order can be as good (any order clears a
table), so two order-free scores sit beside them: whether the texts reach the goal on a symbolic world
(`sim_envs.plan_check`), and whether each key-frame puts the block its subgoal names where the expert's key-frame
for the same subgoal text puts it (`moved_block_agreement`). The first trained decoder had a teacher-forced answer
loss of 0.11 while its free-running plans failed, so these are the numbers to choose checkpoints by. It runs where
the GPU is: the device machines have no physics engines.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.engine import Engine, GenerationRequest
from model.results import collect
from model.sampling import SamplingParams
from sim_envs.keyframe_vision import find_blobs
from sim_envs.plan_check import check_plan
from sim_envs.tasks import parse_subgoal

from .collect import EpisodeRecord
from .sequences import keyframe_per_subgoal


def blob_agreement(generated: np.ndarray | None, truth: np.ndarray, tol_px: float) -> tuple[int, int]:
    """(agreeing colours, colours seen in either image); a missing image agrees with nothing."""
    t = find_blobs(truth)
    g = find_blobs(generated) if generated is not None else {}
    colours = set(t) | set(g)
    ok = sum(c in t and c in g and np.hypot(*np.subtract(t[c].centroid, g[c].centroid)) <= tol_px for c in colours)
    return int(ok), len(colours)


def moved_block_agreement(
    texts: list[str], images: list[np.ndarray | None], expert: list[str], frames: list[np.ndarray], tol_px: float
) -> tuple[int, int]:
    """(agreeing, generated subgoals): order-free key-frame scoring. Each generated subgoal is matched to an unused
    expert subgoal with the same text; it agrees when the block it names sits, in its key-frame, within tol_px of where
    that block sits in the expert's key-frame for the matched subgoal. Other blocks are not compared: after another
    (valid) order they are elsewhere. An unmatched text or a missing image agrees with nothing."""
    unused = list(range(len(expert)))
    ok = 0
    for text, image in zip(texts, images):
        j = next((j for j in unused if expert[j] == text), None)
        call = parse_subgoal(text)
        if j is None or call is None or image is None:
            continue
        unused.remove(j)
        colour = call.obj.removesuffix(" block")
        g, t = find_blobs(image).get(colour), find_blobs(frames[j]).get(colour)
        ok += g is not None and t is not None and np.hypot(*np.subtract(g.centroid, t.centroid)) <= tol_px
    return int(ok), len(texts)


def spread(episodes: list, n: int) -> list:
    """Up to n (record, frames) pairs taken in turn from each env (task x engine), in the given order within an env:
    the first n of a key-sorted list are all one task (32 ClearTable-mujoco episodes, where any block order is right
    but only the recorded one scores), so a probe of them says little about the others."""
    by_env: dict[str, list] = {}
    for ep in episodes:
        by_env.setdefault(ep[0].env_id, []).append(ep)
    rounds = itertools.zip_longest(*(v for _, v in sorted(by_env.items())))  # each env's first, then each one's second
    return [ep for r in rounds for ep in r if ep is not None][:n]


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
    for j, (rec, frames) in enumerate(spread(episodes, n)):
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
        gens = [np.asarray(im.image.convert("RGB").resize((w, h), Image.BILINEAR)) for im in res.images]
        agree = total = 0
        for i, frame_index in enumerate(kf):
            a, t = blob_agreement(gens[i] if i < len(gens) else None, frames[frame_index], tol_px)
            agree, total = agree + a, total + t
        outcome = check_plan(texts, rec.subgoals)
        moved, steps = moved_block_agreement(texts, gens, rec.subgoals, [frames[k] for k in kf], tol_px)
        rows.append(
            {
                "key": rec.key,
                "texts_exact": texts == rec.subgoals,
                "texts_reach_goal": outcome.reaches_goal,
                "why_not": outcome.reason,
                "keyframes": len(res.images),
                "agree": agree,
                "total": total,
                "moved_agree": moved,
                "subgoals": steps,
            }
        )
    n_rows = max(1, len(rows))
    return {
        "episodes": len(rows),
        "texts_exact": sum(r["texts_exact"] for r in rows) / n_rows,
        "texts_reach_goal": sum(r["texts_reach_goal"] for r in rows) / n_rows,
        "placement_agreement": sum(r["agree"] for r in rows) / max(1, sum(r["total"] for r in rows)),
        "moved_block_agreement": sum(r["moved_agree"] for r in rows) / max(1, sum(r["subgoals"] for r in rows)),
        "all_blocks_agree": sum(r["agree"] == r["total"] for r in rows) / n_rows,
        "tol_px": tol_px,
        "greedy": greedy,
        "per_episode": rows,
    }


PLACE = re.compile(r"place the (\w+) block (?:in|on) the (\w+) (zone|block)")


@torch.no_grad()
def grounding(engine: Engine, episodes: list[tuple[EpisodeRecord, np.ndarray]], n: int = 32) -> dict:
    """Does the decoder read which target the words name? Teacher-forced, on episodes that end by placing a block
    in a zone or on a block: the loss of the last key-frame's changed image tokens (`model.train.changed_tokens`)
    under the recorded text, and under the same text naming another target colour (one of the view's blocks for
    "on", else the first palette colour that is neither the block's nor the target's). A decoder that reads the
    target finds the recorded key-frame much less likely under the other name (swapped / true >> 1); one that
    guesses the target from the view alone scores about 1."""
    from model.train import changed_tokens
    from sim_envs.scene import PALETTE

    from .sequences import encode_episodes, episode_texts

    lm, tok = engine.lm, engine.tok
    c = lm.config
    visual = (c.visual_token_start, c.visual_token_start + c.num_visual_tokens)
    picked = spread([(r, f) for r, f in episodes if keyframe_per_subgoal(r) and PLACE.fullmatch(r.subgoals[-1])], n)
    rows = []
    for (rec, frames), codes in zip(picked, encode_episodes(engine.vq, picked)):
        held, target, kind = PLACE.fullmatch(rec.subgoals[-1]).groups()
        seen = [b for b in find_blobs(frames[0]) if b not in (held, target)] if kind == "block" else []
        other = (seen or [p for p in PALETTE if p not in (held, target)])[0]
        a, b = f"{target} {kind}", f"{other} {kind}"
        swapped = replace(
            rec, instruction=rec.instruction.replace(a, b), subgoals=[s.replace(a, b) for s in rec.subgoals]
        )
        losses = []
        for r in (rec, swapped):
            prompt, answer = episode_texts(r, codes, tok)[0]
            ids = torch.tensor([tok.encode(prompt) + tok.encode(answer)], device=lm.device)
            ce = F.cross_entropy(lm(ids[:, :-1]).logits[0].float(), ids[0, 1:], reduction="none")
            image_no = torch.cumsum(ids[0] == tok.img_id, 0)
            pick = ((image_no == image_no[-1]) & changed_tokens(ids, tok.img_id, visual)[0])[1:]
            losses.append(float(ce[pick].mean()))
        rows.append({"key": rec.key, "target": target, "other": other, "true": losses[0], "swapped": losses[1]})
    true = float(np.mean([r["true"] for r in rows])) if rows else float("nan")
    swapped = float(np.mean([r["swapped"] for r in rows])) if rows else float("nan")
    return {
        "episodes": len(rows),
        "loss_true_target": true,
        "loss_other_target": swapped,
        "ratio": swapped / true if rows else float("nan"),
        "other_higher": sum(r["swapped"] > r["true"] for r in rows) / max(1, len(rows)),
        "per_episode": rows,
    }
