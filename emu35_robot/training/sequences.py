"""Demonstrations -> token sequences in the official vla format.

For an episode with subgoals s_0..s_{n-1} and true key-frames f_1..f_n (f_0 is the view before acting), start k
gives: the vla prompt with instruction + view f_k, then `s_k <image f_{k+1}> s_{k+1} <image f_{k+2}> ... EOS`. Every
start is a sequence, so the model also learns to re-plan from a half-done scene (closed-loop evaluation needs it).

Explore episodes become one multi-turn conversation, written exactly as `model.engine.Session` continues one: the
explore prompt with the start view, its narration, EOS, then per command
` USER: {command} ASSISTANT: <|extra_100|>` + the new view's narration + the new view + EOS.
"""

from __future__ import annotations

import numpy as np

from model.prompts import task_prompt, unconditional_prompt
from model.sequence import image_string
from model.text_tokenizer import TextTokenizer
from model.train_vq import encode_frames
from model.vision_tokenizer import VisionTokenizer

from .collect import EpisodeRecord, ExploreRecord

EOS = "<|extra_204|>"
# Subgoal texts are padded with spaces to this many bytes (one byte-level token each; the engine strips them), so
# every key-frame starts the same number of tokens after the image before it. Why: a key-frame is mostly a copy of
# the previous image, and a copy at a fixed distance is one RoPE attention head's job; at a distance that moves with
# the subgoal's wording the small decoder instead memorised whole scenes (held-out loss 6.5x training loss).
SUBGOAL_WIDTH = 48
EXPLORE_QUESTIONS = (
    "Explore this tabletop.",
    "Look around the table.",
    "Walk around this scene and tell me what you see.",
)


def keyframe_per_subgoal(rec: EpisodeRecord) -> list[int] | None:
    """Frame index of each subgoal's key-frame (the last time it was reached); None if one never was."""
    last: dict[int, int] = {}
    for i, k in enumerate(rec.keyframe_subgoals, start=1):
        last[k] = i
    if any(k not in last for k in range(len(rec.subgoals))):
        return None
    return [last[k] for k in range(len(rec.subgoals))]


def padded(subgoal: str) -> str:
    return subgoal.ljust(SUBGOAL_WIDTH)


Pair = tuple[str, str]  # (prompt, answer): the loss covers the answer only


def episode_texts(rec: EpisodeRecord, codes: np.ndarray, tok: TextTokenizer) -> list[Pair]:
    kf = keyframe_per_subgoal(rec)
    if kf is None:
        return []
    images = [image_string(tok, c) for c in codes]
    out = []
    for k in range(len(rec.subgoals)):
        view = 0 if k == 0 else kf[k - 1]
        answer = "".join(padded(rec.subgoals[i]) + images[kf[i]] for i in range(k, len(rec.subgoals)))
        out.append((task_prompt("vla", rec.instruction, [images[view]]), answer + EOS))
    return out


def unconditional_text(rec: EpisodeRecord, codes: np.ndarray, tok: TextTokenizer) -> Pair | None:
    """What CFG's unconditional stream sees (spec §7): the unconditional prompt with the first view, then only the
    generated images, never text. One per episode, so the model learns that distribution too and CFG can use it."""
    kf = keyframe_per_subgoal(rec)
    if kf is None:
        return None
    return unconditional_prompt([image_string(tok, codes[0])]), "".join(image_string(tok, codes[i]) for i in kf) + EOS


def encode_pairs(pairs: list[Pair], tok: TextTokenizer) -> list[tuple[list[int], int]]:
    """(ids, loss_from) per pair. Prompt and answer are encoded apart, as the engine does at inference."""
    out = []
    for prompt, answer in pairs:
        p = tok.encode(prompt)
        out.append((p + tok.encode(answer), len(p)))
    return out


def vla_sequences(
    episodes: list[tuple[EpisodeRecord, np.ndarray]], tok: TextTokenizer, vq: VisionTokenizer
) -> list[tuple[list[int], int]]:
    pairs = []
    for rec, frames in episodes:
        codes = encode_frames(vq, frames)
        texts = episode_texts(rec, codes, tok)
        if texts:
            texts.append(unconditional_text(rec, codes, tok))
        pairs += texts
    return encode_pairs(pairs, tok)


def explore_text(rec: ExploreRecord, codes: np.ndarray, tok: TextTokenizer) -> Pair:
    """The whole conversation; the loss covers everything after the first prompt (user turns included: they are
    a few bytes, and the model then also knows which commands exist)."""
    images = [image_string(tok, c) for c in codes]
    question = EXPLORE_QUESTIONS[rec.seed % len(EXPLORE_QUESTIONS)]
    answer = rec.narrations[0] + EOS
    for i, command in enumerate(rec.commands, start=1):
        answer += f" USER: {command} ASSISTANT: <|extra_100|>" + rec.narrations[i] + images[i] + EOS
    return task_prompt("explore", question, [images[0]]), answer


def explore_unconditional_text(codes: np.ndarray, tok: TextTokenizer) -> Pair:
    """CFG's unconditional row of a session: its prompt with the start view, then only the generated views."""
    return unconditional_prompt([image_string(tok, codes[0])]), "".join(image_string(tok, c) for c in codes[1:])


def explore_sequences(
    episodes: list[tuple[ExploreRecord, np.ndarray]], tok: TextTokenizer, vq: VisionTokenizer
) -> list[tuple[list[int], int]]:
    pairs = []
    for rec, frames in episodes:
        codes = encode_frames(vq, frames)
        pairs += [explore_text(rec, codes, tok), explore_unconditional_text(codes, tok)]
    return encode_pairs(pairs, tok)
