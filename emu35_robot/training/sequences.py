"""Demonstrations -> token sequences in the official vla format.

For an episode with subgoals s_0..s_{n-1} and true key-frames f_1..f_n (f_0 is the view before acting), start k
gives: the vla prompt with instruction + view f_k, then `s_k <image f_{k+1}> s_{k+1} <image f_{k+2}> ... EOS`. Every
start is a sequence, so the model also learns to re-plan from a half-done scene (closed-loop evaluation needs it).

Explore episodes become one multi-turn conversation, written exactly as `model.engine.Session` continues one: the
explore prompt with the start view, its narration, EOS, then per command
` USER: {command} ASSISTANT: <|extra_100|>` + the new view's narration + the new view + EOS.
"""

from __future__ import annotations

import multiprocessing

import numpy as np

from model.prompts import task_prompt, unconditional_prompt
from model.sequence import image_string
from model.text_tokenizer import TextTokenizer
from model.train_vq import encode_frames
from model.vision_tokenizer import VisionTokenizer

from ..workers import _exit_with_parent
from .collect import EpisodeRecord, ExploreRecord

EOS = "<|extra_204|>"
# The text between two images of a plan is padded with trailing spaces (one byte-level token each; captions are
# stripped) to this many tokens, so every key-frame starts the same distance after the image before it, the view
# included: the view is followed by " ASSISTANT: <|extra_100|>" and the first subgoal, later key-frames by their
# subgoal alone. Why: a key-frame is mostly a copy of the image before it, and a copy at one fixed distance is one
# RoPE attention head's job. At distances that moved with the wording, a 14M decoder memorised scenes (held-out loss
# 6.5x training). With only the subgoals padded (the first gap 13 tokens longer than the rest), the next one was no
# longer overfit, but its free-running first key-frames still lost the view's scene (its tokenizer also lost the
# block colours, so the two causes are not separated yet).
GAP_TOKENS = 64
AFTER_VIEW = " ASSISTANT: <|extra_100|>"  # how the vla prompt ends (model.prompts)
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


def padded(subgoal: str, first: bool, tok: TextTokenizer) -> str:
    """The subgoal with trailing spaces so that the text between its image and the one before is GAP_TOKENS long."""
    lead = len(tok.encode(AFTER_VIEW)) if first else 0
    n = len(tok.encode(subgoal))
    if lead + n > GAP_TOKENS:
        raise ValueError(f"subgoal {subgoal!r} is {n} tokens; at most {GAP_TOKENS - lead} fit the fixed gap")
    return subgoal + " " * (GAP_TOKENS - lead - n)


Pair = tuple[str, str]  # (prompt, answer): the loss covers the answer only


def episode_texts(rec: EpisodeRecord, codes: np.ndarray, tok: TextTokenizer) -> list[Pair]:
    kf = keyframe_per_subgoal(rec)
    if kf is None:
        return []
    images = [image_string(tok, c) for c in codes]
    out = []
    for k in range(len(rec.subgoals)):
        view = 0 if k == 0 else kf[k - 1]
        answer = "".join(padded(rec.subgoals[i], i == k, tok) + images[kf[i]] for i in range(k, len(rec.subgoals)))
        prompt = task_prompt("vla", rec.instruction, [images[view]])
        assert prompt.endswith(AFTER_VIEW)
        out.append((prompt, answer + EOS))
    return out


def unconditional_text(rec: EpisodeRecord, codes: np.ndarray, tok: TextTokenizer) -> Pair | None:
    """What CFG's unconditional stream sees (spec §7): the unconditional prompt with the first view, then only the
    generated images, never text. One per episode, so the model learns that distribution too and CFG can use it."""
    kf = keyframe_per_subgoal(rec)
    if kf is None:
        return None
    return unconditional_prompt([image_string(tok, codes[0])]), "".join(image_string(tok, codes[i]) for i in kf) + EOS


def _encode_pair(tok: TextTokenizer, pair: Pair) -> tuple[list[int], int]:
    p = tok.encode(pair[0])
    return p + tok.encode(pair[1]), len(p)


_worker_tok: TextTokenizer | None = None


def _init_worker(tok: TextTokenizer) -> None:
    global _worker_tok
    _worker_tok = tok
    _exit_with_parent()  # a forked worker holds both ends of its task pipe: a killed parent would orphan it


def _encode_in_worker(pair: Pair) -> tuple[np.ndarray, int]:
    ids, n = _encode_pair(_worker_tok, pair)
    return np.asarray(ids, dtype=np.int32), n  # an array pickles back 5x smaller than a list


def encode_pairs(pairs: list[Pair], tok: TextTokenizer, workers: int = 1) -> list[tuple[list[int], int]]:
    """(ids, loss_from) per pair. Prompt and answer are encoded apart, as the engine does at inference. With
    `workers` > 1 (and many pairs) forked processes share the work: tens of thousands of sequences, each a few
    thousand special tokens, take minutes on one core."""
    if workers <= 1 or len(pairs) < 512 or "fork" not in multiprocessing.get_all_start_methods():
        return [_encode_pair(tok, pair) for pair in pairs]
    with multiprocessing.get_context("fork").Pool(workers, _init_worker, (tok,)) as pool:
        return [(ids.tolist(), n) for ids, n in pool.imap(_encode_in_worker, pairs, chunksize=64)]


def encode_episodes(vq: VisionTokenizer, episodes: list[tuple], chunk: int = 256) -> list[np.ndarray]:
    """Codes of every episode's frames, encoding the frames of up to `chunk` episodes together: one small forward
    per episode leaves a GPU waiting on kernel launches (minutes over tens of thousands of episodes). A CPU is
    fastest at small batches (a 256-frame batch ran 2.5x slower per frame: its activations leave the caches)."""
    batch = 256 if vq.quant_conv.weight.device.type == "cuda" else 16
    out = []
    for i in range(0, len(episodes), chunk):
        frames = [f for _, f in episodes[i : i + chunk]]
        codes = encode_frames(vq, np.concatenate(frames), batch=batch)
        out += np.split(codes, np.cumsum([len(f) for f in frames])[:-1])
    return out


def vla_sequences(
    episodes: list[tuple[EpisodeRecord, np.ndarray]],
    tok: TextTokenizer,
    vq: VisionTokenizer,
    workers: int = 1,
    negatives: np.random.Generator | None = None,
) -> list[tuple[list[int], int]] | tuple[list, list]:
    """(ids, loss_from) per sequence. With `negatives` (a generator): also each sequence's negative for the
    grounding loss (`augment.swap_colours`: the same images under texts naming other colours; None for the
    unconditional sequences and episodes naming fewer than two colours), returned as (sequences, negatives)."""
    from .augment import swap_colours

    pairs, neg_pairs = [], []
    for (rec, _), codes in zip(episodes, encode_episodes(vq, episodes)):
        texts = episode_texts(rec, codes, tok)
        if not texts:
            continue
        if negatives is not None:
            swapped = swap_colours(rec, negatives)
            try:
                negs = episode_texts(swapped, codes, tok) if swapped is not None else [None] * len(texts)
            except ValueError:  # a swapped subgoal too long for the fixed gap
                negs = [None] * len(texts)
            neg_pairs += [*negs, None]
        pairs += [*texts, unconditional_text(rec, codes, tok)]
    seqs = encode_pairs(pairs, tok, workers)
    if negatives is None:
        return seqs
    have = [i for i, n in enumerate(neg_pairs) if n is not None]
    encoded = dict(zip(have, encode_pairs([neg_pairs[i] for i in have], tok, workers)))
    return seqs, [encoded.get(i) for i in range(len(seqs))]


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
    episodes: list[tuple[ExploreRecord, np.ndarray]], tok: TextTokenizer, vq: VisionTokenizer, workers: int = 1
) -> list[tuple[list[int], int]]:
    pairs = []
    for (rec, _), codes in zip(episodes, encode_episodes(vq, episodes)):
        pairs += [explore_text(rec, codes, tok), explore_unconditional_text(codes, tok)]
    return encode_pairs(pairs, tok, workers)
