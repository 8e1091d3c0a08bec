"""Demonstrations -> vla and explore sequences: collection resumes, and every sequence has the official layout."""

import json

import numpy as np
import pytest
import torch

from emu35_robot.training.collect import collect, collect_explore, load, load_explore
from emu35_robot.training.sequences import (
    GAP_TOKENS,
    encode_frames,
    encode_pairs,
    episode_texts,
    explore_sequences,
    explore_text,
    keyframe_per_subgoal,
    padded,
    unconditional_text,
)
from model import ImageSegment, TextSegment, parse_stream
from model.prompts import task_prompt
from model.sequence import image_string
from model.text_tokenizer import TextTokenizer, byte_level_ranks, vision_token_list
from model.vision_tokenizer import VisionTokenizer, tiny_vision_config

pytest.importorskip("sim_envs")
ENVS = ["sim_envs/Stack-mujoco-v0", "sim_envs/PlaceInZone-pybullet-v0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos")
    assert collect(out, ENVS, range(2), size=64, progress=False) == 4
    return out


def test_collection_is_incremental_and_resumes(data):
    lines = (data / "episodes.jsonl").read_text().splitlines()
    assert collect(data, ENVS, range(3), size=64, progress=False) == 2  # only the new seed of each env
    keys = [json.loads(x)["key"] for x in (data / "episodes.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 6 and keys[:4] == [json.loads(x)["key"] for x in lines]
    with open(data / "episodes.jsonl", "a") as f:
        f.write('{"key": "torn')  # an interrupted write
    assert len(load(data)) == 6


def test_parallel_collection_records_the_same_episodes(data, tmp_path):
    """Two worker processes: the same records and frames as one process, indexed in the order they finish."""
    assert collect(tmp_path, ENVS, range(2), size=64, progress=False, workers=2) == 4
    assert collect_explore(tmp_path, ENVS[:1], range(2), size=64, turns=2, progress=False, workers=2) == 2
    one = {rec.key: (rec, f) for rec, f in load(data)}
    two = load(tmp_path)
    assert sorted(r.key for r, _ in two) == sorted(k for k in one if int(k.rsplit("/", 1)[1]) < 2)
    for rec, frames in two:
        assert rec == one[rec.key][0] and np.array_equal(frames, one[rec.key][1])
    assert len(load_explore(tmp_path)) == 2


def fails_on_seed_1(env, env_id, seed):  # module level: worker processes receive it
    from emu35_robot.training.collect import _vla_episode

    if seed == 1:
        raise ValueError("the expert fell over")
    return _vla_episode(env, env_id, seed, size=64)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_episode_keeps_the_others_and_raises(tmp_path, workers):
    from emu35_robot.training.collect import _run

    todo = [(ENVS[0], s) for s in range(4)]
    with pytest.raises(ValueError, match="fell over"):
        _run(tmp_path, "episodes.jsonl", todo, 64, False, fails_on_seed_1, workers)
    recs = load(tmp_path)
    assert "sim_envs/Stack-mujoco-v0/1" not in [r.key for r, _ in recs]
    assert workers == 2 or [r.key for r, _ in recs] == ["sim_envs/Stack-mujoco-v0/0"]  # one process stops there
    assert collect(tmp_path, ENVS[:1], range(4), size=64, progress=False) == 4 - len(recs)  # resumes after them


def test_vla_sequences_have_the_official_layout(data):
    tok = TextTokenizer(byte_level_ranks(), vision_token_list(64))
    torch.manual_seed(0)
    vq = VisionTokenizer(tiny_vision_config(n_embed=64, resolution=64))
    rec, frames = load(data)[0]
    assert rec.success and frames.shape[1:] == (64, 64, 3) and frames.dtype == np.uint8
    kf = keyframe_per_subgoal(rec)
    assert kf is not None and len(kf) == len(rec.subgoals)
    codes = encode_frames(vq, frames)
    texts = episode_texts(rec, codes, tok)
    assert len(texts) == len(rec.subgoals)  # one sequence per starting subgoal
    for k, (prompt, answer) in enumerate(texts):
        assert prompt.startswith("<|extra_203|>") and prompt.endswith("<|extra_100|>")
        segs = parse_stream(tok, tok.encode(prompt + answer))
        images = [s for s in segs if isinstance(s, ImageSegment)]
        words = [s.text for s in segs if isinstance(s, TextSegment)]
        assert all(s.complete and s.codes.shape == (4, 4) for s in images)
        assert len(images) == 1 + len(rec.subgoals) - k
        assert words[0] == f"<|extra_203|>You are a helpful assistant for vla task. USER: {rec.instruction}"
        assert words[1] == " ASSISTANT: <|extra_100|>" + padded(rec.subgoals[k], True, tok)
        assert words[1].rstrip() == " ASSISTANT: <|extra_100|>" + rec.subgoals[k]
        # every key-frame starts the same distance after the image before it, the view included: a copy is one offset
        ids = tok.encode(prompt) + tok.encode(answer)
        starts = [i for i, t in enumerate(ids) if t == tok.boi_id]
        ends = [i for i, t in enumerate(ids) if t == tok.eoi_id]
        assert [b - a for a, b in zip(ends, starts[1:])] == [GAP_TOKENS + 1] * (len(starts) - 1)
        assert words[-1] == "<|extra_204|>"
        np.testing.assert_array_equal(images[-1].codes, codes[kf[-1]])  # the last key-frame closes every plan
    # CFG's unconditional stream: the unconditional prompt with the first view, then only the key-frames
    u = parse_stream(tok, tok.encode("".join(unconditional_text(rec, codes, tok))))
    assert [s.text for s in u if isinstance(s, TextSegment)][0] == "<|extra_203|>You are a helpful assistant. USER: "
    assert sum(isinstance(s, ImageSegment) for s in u) == 1 + len(rec.subgoals)

    # the loss starts where the answer does: the prompt is encoded alone, exactly as the engine encodes it
    (ids, start), *_ = encode_pairs(texts[:1], tok)
    assert ids[:start] == tok.encode(texts[0][0]) and ids[start:] == tok.encode(texts[0][1])


def test_explore_sequences_continue_like_a_session(tmp_path):
    assert collect_explore(tmp_path, ENVS[:1], range(2), size=64, turns=3, progress=False) == 2
    assert collect_explore(tmp_path, ENVS[:1], range(2), size=64, turns=3, progress=False) == 0  # resumes
    (rec, frames), _ = load_explore(tmp_path)
    assert frames.shape == (4, 64, 64, 3) and len(rec.commands) == 3 and len(rec.narrations) == 4
    assert not np.array_equal(frames[0], frames[1])  # the camera moved
    assert all(n.startswith("From ") and n.endswith(".") for n in rec.narrations)
    tok = TextTokenizer(byte_level_ranks(), vision_token_list(64))
    torch.manual_seed(0)
    vq = VisionTokenizer(tiny_vision_config(n_embed=64, resolution=64))
    codes = encode_frames(vq, frames)
    prompt, answer = explore_text(rec, codes, tok)
    question = prompt.split("USER: ")[1].split("<|image start|>")[0]
    assert prompt == task_prompt("explore", question, [image_string(tok, codes[0])])
    turns = answer.split("<|extra_204|>")
    assert turns[0] == rec.narrations[0] and turns[-1] == ""
    for i, command in enumerate(rec.commands, start=1):
        assert turns[i].startswith(f" USER: {command} ASSISTANT: <|extra_100|>{rec.narrations[i]}")
    images = [s for s in parse_stream(tok, tok.encode(prompt + answer)) if isinstance(s, ImageSegment)]
    assert len(images) == 4 and all(s.complete for s in images)
    np.testing.assert_array_equal(images[-1].codes, codes[-1])
    seqs = explore_sequences(load_explore(tmp_path), tok, vq)
    assert len(seqs) == 4 and all(0 < start < len(ids) for ids, start in seqs)  # conversation + unconditional row


def test_augmentation_recolours_images_and_words_together(data):
    from emu35_robot.training.augment import augment_episode, recolour, recolour_text
    from sim_envs.keyframe_vision import find_blobs

    rec, frames = load(data)[0]
    perm = {"red": "blue", "blue": "red", "green": "yellow", "yellow": "green", "cyan": "magenta", "magenta": "cyan"}
    assert (
        recolour_text("put the red block on the cyan zone; reduce", perm)
        == "put the blue block on the magenta zone; reduce"
    )
    before, after = find_blobs(frames[0]), find_blobs(recolour(frames[:1], perm)[0])
    assert before and {perm[c] for c in before} == set(after)
    for c, b in before.items():  # same place, new colour
        assert np.allclose(b.centroid, after[perm[c]].centroid, atol=0.5)
    table = frames[0][-1, 0]  # a table pixel (bottom-left corner) is untouched
    assert np.abs(recolour(frames[:1], perm)[0][-1, 0].astype(int) - table).max() <= 2
    rng = np.random.default_rng(1)
    xs = sorted(b.centroid[0] for b in before.values())
    mirrored_xs = sorted(frames.shape[2] - 1 - x for x in xs)
    kinds = set()
    for _ in range(8):
        r2, f2 = augment_episode(rec, frames, rng)
        assert f2.shape == frames.shape and r2.keyframe_subgoals == rec.keyframe_subgoals
        words = lambda s: [w for w in s.split() if w not in perm]
        assert words(r2.instruction) == words(rec.instruction)  # only colour words change
        assert [words(s) for s in r2.subgoals] == [words(s) for s in rec.subgoals]
        got = sorted(b.centroid[0] for b in find_blobs(f2[0]).values())
        kinds.add(
            "mirrored" if np.allclose(got, mirrored_xs, atol=0.5) else "kept" if np.allclose(got, xs, atol=0.5) else "?"
        )
    assert kinds == {"mirrored", "kept"}  # both occur, and nothing else does


def test_probe_scores_free_running_plans_against_recorded_keyframes(data, bundle):
    from emu35_robot.training.probe import blob_agreement, probe
    from model import Emu35
    from model.engine import Engine

    rec, frames = load(data)[0]
    from sim_envs.keyframe_vision import find_blobs

    n = len(find_blobs(frames[-1]))
    assert n > 0 and blob_agreement(frames[-1], frames[-1], 1.0) == (n, n)  # a key-frame agrees with itself
    assert blob_agreement(None, frames[-1], 1.0) == (0, n)  # a missing key-frame agrees with nothing
    moved = np.roll(frames[-1], 8, axis=1)  # every block 8 px to the right
    assert blob_agreement(moved, frames[-1], 3.0)[0] < n
    engine = Engine(
        Emu35.from_pretrained(bundle.model, dtype=torch.float32),
        TextTokenizer.from_pretrained(bundle.tokenizer),
        VisionTokenizer.from_pretrained(bundle.vision_tokenizer),
        max_len=2048,
    )
    r = probe(engine, load(data)[:2], n=2, greedy=True)  # a random model: noise, scored as such
    assert r["episodes"] == 2 and len(r["per_episode"]) == 2
    assert 0.0 <= r["placement_agreement"] < 1.0 and r["texts_exact"] == 0.0
    assert all(e["total"] > 0 for e in r["per_episode"])  # the recorded key-frames show blocks
    assert r["texts_reach_goal"] == 0.0 and all(e["why_not"] != "ok" for e in r["per_episode"])  # noise: no plan
    assert 0.0 <= r["moved_block_agreement"] < 1.0

    from emu35_robot.training.probe import grounding

    g = grounding(engine, load(data), n=4)  # Stack and PlaceInZone episodes end in a placement
    assert g["episodes"] == 4 and all(e["other"] != e["target"] for e in g["per_episode"])
    assert g["loss_true_target"] > 0 and g["loss_other_target"] > 0 and g["ratio"] > 0


def test_a_subgoal_too_long_for_the_fixed_gap_is_refused():
    tok = TextTokenizer(byte_level_ranks(), vision_token_list(16))
    assert len(padded("pick up the red block", False, tok)) == GAP_TOKENS
    with pytest.raises(ValueError, match="fixed gap"):
        padded("x" * GAP_TOKENS, True, tok)


def test_pairs_encode_the_same_in_worker_processes():
    tok = TextTokenizer(byte_level_ranks(), vision_token_list(16))
    image = image_string(tok, np.arange(16).reshape(4, 4) % 16)
    pairs = [
        (task_prompt("vla", f"task {i}", [image]), padded(f"pick up block {i}", True, tok) + image) for i in range(600)
    ]
    assert encode_pairs(pairs, tok, workers=2) == encode_pairs(pairs, tok, workers=1)


def test_a_worker_whose_first_episode_is_a_missing_goal_records_the_next_one(tmp_path):
    """A worker process may meet an env first with a goal the scene lacks (NoSuchGoal from reset). The env it keeps
    must still record: gymnasium's passive checker, which marks its first reset done before running it, crashed the
    next step (16 cores on the device: 1,213 of ~5,700 episodes, then the whole collection stopped)."""
    from functools import partial

    from emu35_robot.training import collect as c

    c._close_envs()
    one = partial(c._vla_episode, size=64)
    (tmp_path / "frames").mkdir()
    assert c._episode(one, 64, tmp_path, ("sim_envs/ClearTable-mujoco-v0", 0, 2)) is None  # two blocks: no goal 2
    rec = c._episode(one, 64, tmp_path, ("sim_envs/ClearTable-mujoco-v0", 0, 1))
    assert rec is not None and rec["success"] and (tmp_path / rec["file"]).exists()
    c._close_envs()


def test_retargeted_goals_are_recorded_beside_their_scene_and_split_with_it(tmp_path):
    from emu35_robot.training.pipeline import split

    envs = ["sim_envs/PlaceInZone-mujoco-v0", "sim_envs/ClearTable-mujoco-v0"]
    # PlaceInZone 2 x 3; ClearTable's two scenes hold two blocks each, so one other order each
    assert collect(tmp_path, envs, range(2), size=64, progress=False, retarget=2) == 10
    recs = {r.key: (r, f) for r, f in load(tmp_path)}
    assert collect(tmp_path, envs, range(2), size=64, progress=False, retarget=2) == 0  # all there (or skipped)
    base, (one, f1) = recs["sim_envs/PlaceInZone-mujoco-v0/0"], recs["sim_envs/PlaceInZone-mujoco-v0/0/1"]
    assert one.variant == 1 and one.seed == 0 and one.instruction != base[0].instruction
    assert np.array_equal(f1[0], base[1][0])  # the same first view
    assert "sim_envs/ClearTable-mujoco-v0/0/2" not in recs
    order, cleared = recs["sim_envs/ClearTable-mujoco-v0/0/1"][0], recs["sim_envs/ClearTable-mujoco-v0/0"][0]
    assert order.instruction == cleared.instruction and order.subgoals[0] != cleared.subgoals[0]
    train, held = split(list(recs.values()), held_out_fraction=0.25)
    scenes = lambda eps: {(r.env_id, r.seed) for r, _ in eps}  # noqa: E731
    assert held and not scenes(train) & scenes(held)  # a scene's goals stay together
    assert all(
        sum(r.env_id == e and r.seed == s for r, _ in held) == (3 if "Place" in e else 2) for e, s in scenes(held)
    )
    # adding or removing other data moves no episode across the split: each scene's side is its own hash
    fraction = 0.7  # large enough that the fallback (hold out one scene of a tiny collection) plays no part
    _, held_all = split(list(recs.values()), held_out_fraction=fraction)
    place = [e for e in recs.values() if "PlaceInZone" in e[0].env_id]
    _, held_place = split(place, held_out_fraction=fraction)
    keys = lambda eps: sorted(r.key for r, _ in eps)  # noqa: E731
    assert keys(held_place) == keys(e for e in held_all if "PlaceInZone" in e[0].env_id)


def test_the_probe_spreads_its_episodes_over_tasks_and_engines():
    from types import SimpleNamespace

    from emu35_robot.training.probe import spread

    eps = [(SimpleNamespace(env_id=env, i=i), None) for env in ("A-mujoco", "A-pybullet", "B-mujoco") for i in range(3)]
    picked = [(r.env_id, r.i) for r, _ in spread(eps, 5)]
    assert picked == [("A-mujoco", 0), ("A-pybullet", 0), ("B-mujoco", 0), ("A-mujoco", 1), ("A-pybullet", 1)]
    assert len(spread(eps, 20)) == 9 and spread([], 4) == []  # never more than there are


def test_train_probe_cli_writes_every_episode(data, bundle, tmp_path):
    """`emu35-robot train probe --out`: the summary on stdout, the whole result (every episode's row) in the file."""
    import subprocess
    import sys

    out = tmp_path / "probe.json"
    r = subprocess.run(
        [sys.executable, "-m", "emu35_robot", "train", "probe", "--bundle", str(bundle.root), "--data", str(data),
         "--n", "1", "--greedy", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary, full = json.loads(r.stdout), json.loads(out.read_text())
    assert summary["episodes"] == full["episodes"] == 1 and "per_episode" not in summary
    assert set(full["per_episode"][0]) >= {"texts_reach_goal", "why_not", "moved_agree", "subgoals"}


def test_negatives_name_other_colours_over_the_same_images(data):
    """The grounding loss's negatives: every colour the episode names becomes another one it names; the sequence
    keeps its answer layout and images, only the words differ."""
    from emu35_robot.training.augment import COLOUR_WORD, swap_colours
    from emu35_robot.training.sequences import vla_sequences

    tok = TextTokenizer(byte_level_ranks(), vision_token_list(64))
    torch.manual_seed(0)
    vq = VisionTokenizer(tiny_vision_config(n_embed=64, resolution=64))
    episodes = load(data)[:4]
    rng = np.random.default_rng(0)
    named = lambda r: [COLOUR_WORD.findall(t) for t in (r.instruction, *r.subgoals)]
    swapped = 0
    for rec, _ in episodes:
        neg = swap_colours(rec, rng)
        if len(set(sum(named(rec), []))) < 2:  # e.g. the red block into the red zone
            assert neg is None
            continue
        swapped += 1
        assert neg.keyframe_subgoals == rec.keyframe_subgoals
        for a, b in zip(sum(named(rec), []), sum(named(neg), [])):
            assert a != b and b in set(sum(named(rec), []))
        assert COLOUR_WORD.sub("C", neg.instruction) == COLOUR_WORD.sub("C", rec.instruction)
    assert swapped >= 2

    seqs, negs = vla_sequences(episodes, tok, vq, negatives=np.random.default_rng(0))
    assert seqs == vla_sequences(episodes, tok, vq)  # the sequences themselves are unchanged
    assert len(negs) == len(seqs) and sum(n is not None for n in negs) >= 2
    visual = tok.is_visual
    for (ids, a), neg in zip(seqs, negs):
        if tok.decode(ids[:a]).startswith("<|extra_203|>You are a helpful assistant. USER: "):
            assert neg is None  # CFG's unconditional sequence has no words to swap
        if neg is None:
            continue
        n_ids, b = neg
        assert len(ids) - a == len(n_ids) - b
        pos_ans, neg_ans = ids[a:], n_ids[b:]
        assert [t for t in pos_ans if visual(t)] == [t for t in neg_ans if visual(t)]
        assert [i for i, t in enumerate(pos_ans) if visual(t)] == [i for i, t in enumerate(neg_ans) if visual(t)]
        assert pos_ans != neg_ans


def test_train_vq_cli_refuses_decoder_only_without_a_tokenizer_to_keep(tmp_path):
    """`train vq --decoder-only` keeps the codes of the tokenizer given by --init; without one there is nothing to
    keep, and the command says so before loading any data."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "emu35_robot", "train", "vq", "--data", str(tmp_path), "--run", str(tmp_path / "r"),
         "--decoder-only", "--device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode != 0 and "--decoder-only needs --init" in r.stderr
    assert not (tmp_path / "r").exists()
