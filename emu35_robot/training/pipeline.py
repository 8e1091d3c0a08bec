"""The Emu3.5-mini recipe: collect -> train the IBQ tokenizer -> build sequences -> train the decoder -> package.

Each stage writes into one run directory and resumes where it stopped, so a long run survives interruption and a
time-boxed machine can run it in slices (`--until`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import save_emu35
from model.random_checkpoint import config_for_tokenizer
from model.text_tokenizer import TextTokenizer, byte_level_ranks, vision_token_list
from model.train import TrainConfig, Trainer, collate, lm_loss, mask_prompts, token_weights
from model.train_vq import VQTrainConfig, encode_frames, psnr, train_vq
from model.transformer import Emu35
from model.vision_tokenizer import VisionTokenizer, tiny_vision_config

from .augment import augment_episode, augment_explore
from .collect import load, load_explore
from .probe import blob_agreement
from .sequences import explore_sequences, vla_sequences

IMAGE_SIZE = 128  # simulator frames
# 8x downsampling -> 16 x 16 codes per image. The first run used the release's 16x (8 x 8 codes): 22 dB held-out
# after 3000 steps, and 4 cm blocks (5 pixels across) came back blurred or gone, which the key-frame executor
# cannot read. Four levels instead of five is the only change; the architecture is the release's.
N_CODES = 1024
VQ_SHAPE = dict(
    n_embed=N_CODES,
    embed_dim=32,
    ch=32,
    ch_mult=(1, 2, 2, 4),
    num_res_blocks=2,
    z_channels=32,
    attn_resolutions=(16,),
    resolution=IMAGE_SIZE,
)
VQ_COLOUR_WEIGHT = 20.0  # blocks and zones weigh 21x the table in reconstruction (VQTrainConfig.colour_weight)
LM_SHAPE = dict(
    hidden_size=384,
    intermediate_size=1024,
    num_hidden_layers=8,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=4096,
    image_area=IMAGE_SIZE**2,
)


def recipe_tokenizer() -> TextTokenizer:
    """The mini's text tokenizer: byte-level ranks, the specials, N_CODES visual tokens."""
    return TextTokenizer(byte_level_ranks(), vision_token_list(N_CODES))


def scene_hash(env_id: str, seed: int) -> float:
    """A scene's place in [0, 1): fixed by the scene alone, so adding or removing other data never moves it."""
    return zlib.crc32(f"{env_id}/{seed}".encode()) / 2**32


def split(episodes, held_out_fraction: float = 0.05):
    """(train, held out) by scene: the goals recorded in one scene (`collect --retarget`) stay on one side, and a scene
    is held out when its hash falls below the fraction, whatever else is in the collection (a split shuffled over the
    whole collection moved 281 of 299 held-out episodes into training when counterfactual goals were added). A
    collection too small for the fraction to catch any scene holds out its lowest-hash scene."""
    scenes: dict[tuple[str, int], list[int]] = {}
    for i, (rec, _) in enumerate(episodes):
        scenes.setdefault((rec.env_id, rec.seed), []).append(i)
    rank = {s: scene_hash(*s) for s in scenes}
    held = {s for s, h in rank.items() if h < held_out_fraction}
    if not held and len(scenes) > 1:
        held = {min(rank, key=rank.get)}
    return (
        [episodes[i] for s, idx in scenes.items() if s not in held for i in idx],
        [episodes[i] for s, idx in scenes.items() if s in held for i in idx],
    )


Data = Path | list[Path]  # one collection directory, or several (e.g. collected on different machines)


def _dirs(data: Data) -> list[Path]:
    return [Path(d) for d in data] if isinstance(data, list | tuple) else [Path(data)]


def episodes(data: Data) -> tuple[list, list, list, list]:
    """(vla train, vla held-out, explore train, explore held-out) over every directory, split per episode."""
    # by key, so the split does not depend on the order episodes were collected in (parallel collection)
    vla = sorted((e for d in _dirs(data) for e in load(d)), key=lambda e: e[0].key)
    exp = sorted((e for d in _dirs(data) for e in load_explore(d)), key=lambda e: e[0].key)
    return (*split(vla), *(split(exp) if exp else ([], [])))


def frames_split(data: Data) -> tuple[np.ndarray, np.ndarray]:
    """All training frames and held-out frames, from the vla and the explore episodes."""
    train, held, e_train, e_held = episodes(data)
    return (np.concatenate([f for _, f in train + e_train]), np.concatenate([f for _, f in held + e_held]))


def stage_vq(
    data: Data,
    run: Path,
    steps: int,
    batch: int,
    device: str,
    until: int | None = None,
    init: Path | None = None,
    decoder_only: bool = False,
    colour_weight: float | None = None,
    lr: float | None = None,
) -> dict:
    """Train the tokenizer from scratch, or fine-tune one (`init`: a vision_tokenizer dir) at a lower rate.
    `decoder_only` fine-tunes only its pixel decoder: every image keeps its codes, so `init`'s language model
    stays valid (the result checks that on the held-out frames). `colour_weight` and `lr` default to the recipe's
    (VQ_COLOUR_WEIGHT; 4e-4 from scratch, 1.5e-4 fine-tuning)."""
    if decoder_only and init is None:
        raise ValueError("decoder_only fine-tunes a trained tokenizer: pass init (a vision_tokenizer dir)")
    frames, held_frames = frames_split(data)
    torch.manual_seed(0)
    vq = VisionTokenizer(tiny_vision_config(**VQ_SHAPE)).to(device)
    if init is not None:
        vq.load_state_dict(VisionTokenizer.from_pretrained(init).state_dict())
    default_lr, warmup = (1.5e-4, 50) if init is not None else (4e-4, 200)
    lr = default_lr if lr is None else lr
    cfg = VQTrainConfig(
        steps=steps,
        batch_size=batch,
        lr=lr,
        warmup=warmup,
        log_every=50,
        ckpt_every=500,
        colour_weight=VQ_COLOUR_WEIGHT if colour_weight is None else colour_weight,
        decoder_only=decoder_only,
    )
    print(
        f"vq: {len(frames)} training frames, {len(held_frames)} held-out, {sum(p.numel() for p in vq.parameters()):,}"
        " params",
        flush=True,
    )
    result = train_vq(vq, frames, held_frames, run / "vq", cfg, until=until)
    if result["steps"] == steps and len(held_frames):
        result["blob_agreement"] = reconstruction_blob_agreement(vq, held_frames[:512])
        result["device"] = device_name(device)
        if init is not None:
            result["init"] = str(init)
        if decoder_only:
            result["decoder_only"] = True
            before = VisionTokenizer.from_pretrained(init).to(device)
            result["codes_unchanged"] = bool(
                np.array_equal(encode_frames(before, held_frames), encode_frames(vq, held_frames))
            )
            result["psnr_init"] = psnr(before, held_frames)
            result["blob_agreement_init"] = reconstruction_blob_agreement(before, held_frames[:512])
        (run / "vq" / "vq_result.json").write_text(json.dumps(result, indent=2))
    return result


def device_name(device: str | torch.device) -> str:
    """What a run's records say it trained on: the GPU's name, or the CPU's core count."""
    d = torch.device(device)
    return torch.cuda.get_device_name(d) if d.type == "cuda" else f"CPU ({os.cpu_count()} cores)"


@torch.no_grad()
def reconstruction_blob_agreement(vq: VisionTokenizer, frames: np.ndarray, tol_px: float = 3.0) -> float:
    """Share of colour blobs (blocks, zones) that survive encode -> decode within `tol_px` pixels: the ceiling of any
    decoder's key-frame placement (see probe.py). PSNR hides it: 25 dB kept only 24 %."""
    agree = total = 0
    for i in range(0, len(frames), 64):
        x = frames[i : i + 64]
        decoded = vq.decode_pil(torch.as_tensor(encode_frames(vq, x)).to(vq.quant_conv.weight.device))
        for a, b in zip(decoded, x):
            ok, n = blob_agreement(np.asarray(a), b, tol_px)
            agree, total = agree + ok, total + n
    return agree / max(total, 1)


@torch.no_grad()
def held_out_loss(lm: Emu35, seqs: list, batch: int = 16, limit: int = 512) -> float:
    """Mean answer loss (the training weights) over up to `limit` held-out sequences."""
    c = lm.config
    lm.eval()
    total, weight = 0.0, 0.0
    for i in range(0, min(limit, len(seqs)), batch):
        chunk = seqs[i : i + batch]
        ids = collate([s for s, _ in chunk], c.pad_token_id, 4096).to(lm.device)
        w = token_weights(ids, c.visual_token_start, c.visual_token_start + c.num_visual_tokens, c.pad_token_id, 0.5)
        w = mask_prompts(w, [n for _, n in chunk])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=lm.device.type == "cuda"):
            mean = lm_loss(lm, ids, w)  # weighted mean over this chunk's answer tokens
        total += float(mean) * float(w[:, 1:].sum())
        weight += float(w[:, 1:].sum())
    return total / max(weight, 1e-9)


def probe_held_out(lm: Emu35, tok: TextTokenizer, vq: VisionTokenizer, held: list, n: int = 32) -> tuple[dict, dict]:
    """On one engine: free-running plans on held-out vla episodes, scored against their recorded key-frames
    (probe.probe), and how much the placement key-frames depend on the target's name (probe.grounding)."""
    from model.engine import Engine

    from .probe import grounding, probe

    engine = Engine(lm.eval(), tok, vq, max_len=4096)
    out = {"sampled": probe(engine, held, n), "greedy": probe(engine, held, n, greedy=True)}
    reads = grounding(engine, held, n)
    for r in (*out.values(), reads):
        r.pop("per_episode")
    return out, reads


def save_sequences(path: Path, seqs: dict[str, list]) -> None:
    """Token sequences as flat int32 arrays + offsets + loss starts (a JSON of 100k sequences is a gigabyte).
    `seqs`: "train" and "held_out" lists of (ids, loss_from); optionally "train_negatives" (aligned with "train":
    (ids, loss_from) or None), stored with the index of the sequence each belongs to."""
    arrays = {}
    for name, items in seqs.items():
        of = [i for i, x in enumerate(items) if x is not None]
        items = [items[i] for i in of]
        lengths = np.array([len(ids) for ids, _ in items], dtype=np.int64)
        arrays[f"{name}_ids"] = np.concatenate([np.asarray(ids, dtype=np.int32) for ids, _ in items] or [[]])
        arrays[f"{name}_offsets"] = np.concatenate([[0], np.cumsum(lengths)])
        arrays[f"{name}_loss_from"] = np.array([n for _, n in items], dtype=np.int64)
        if name.endswith("_negatives"):
            arrays[f"{name}_of"] = np.array(of, dtype=np.int64)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_sequences(path: Path) -> dict[str, list]:
    """save_sequences' dict back; "train_negatives" is present only when they were saved."""
    z = np.load(path)
    out = {}
    for name in ("train", "held_out", "train_negatives"):
        if f"{name}_ids" not in z:
            continue
        ids, off, start = z[f"{name}_ids"], z[f"{name}_offsets"], z[f"{name}_loss_from"]
        items = [(ids[off[i] : off[i + 1]], int(start[i])) for i in range(len(start))]
        if name.endswith("_negatives"):
            full = [None] * len(out["train"])
            for i, item in zip(z[f"{name}_of"], items):
                full[int(i)] = item
            items = full
        out[name] = items
    return out


def held_out_sequences(split_episodes: tuple, tok: TextTokenizer, vq: VisionTokenizer, workers: int = 0) -> list:
    """The held-out episodes' sequences, as recorded (never augmented)."""
    _, held, _, e_held = split_episodes
    w = workers or os.cpu_count() or 1
    return vla_sequences(held, tok, vq, w) + explore_sequences(e_held, tok, vq, w)


def build_sequences(
    split_episodes: tuple,
    tok: TextTokenizer,
    vq: VisionTokenizer,
    augment: int,
    seed: int = 0,
    workers: int = 0,
    negatives: bool = False,
) -> dict:
    """From `episodes(data)`: held-out episodes as recorded; training episodes as recorded plus `augment`
    recoloured/mirrored copies. `workers` processes encode the text (0: one per core). `negatives`: also
    "train_negatives", each vla sequence's colour-swapped negative (for the grounding loss)."""
    train, held, e_train, e_held = split_episodes
    rng = np.random.default_rng(seed)
    neg_rng = np.random.default_rng([seed, 1]) if negatives else None  # its own stream: augmentation unchanged
    w = workers or os.cpu_count() or 1
    seqs = {"train": [], "held_out": held_out_sequences(split_episodes, tok, vq, w)}
    if negatives:
        seqs["train_negatives"] = []

    def add(vla_episodes, explore_episodes) -> None:
        out = vla_sequences(vla_episodes, tok, vq, w, negatives=neg_rng)
        explore = explore_sequences(explore_episodes, tok, vq, w)
        if negatives:
            out, negs = out
            seqs["train_negatives"] += negs + [None] * len(explore)
        seqs["train"] += out + explore

    add(train, e_train)
    for _ in range(augment):
        add([augment_episode(r, f, rng) for r, f in train], [augment_explore(r, f, rng) for r, f in e_train])
    return seqs


INPUT_NOISE = 0.15  # share of answer image tokens the decoder reads corrupted (TrainConfig.input_noise)


def stage_lm(
    data: Data,
    run: Path,
    steps: int,
    batch: int,
    device: str,
    until: int | None = None,
    augment: int = 3,
    input_noise: float = INPUT_NOISE,
    init: Path | None = None,
    lr: float = 1e-3,
    change_weight: float = 0.0,
    contrast_weight: float = 0.0,
    probe_n: int = 32,
) -> list[dict]:
    """Train the decoder from scratch, or fine-tune one (`init`: a model dir in the official layout, e.g. a
    previous bundle's model/, whose vocabulary must match; continuing a trained model wants a lower peak `lr`).
    `contrast_weight` > 0 adds the grounding loss against colour-swapped negatives (TrainConfig). `probe_n`: held-out
    episodes the result's free-running probes plan (0: none, for a time-boxed machine)."""
    tok = recipe_tokenizer()
    tok.save_pretrained(run / "tokenizer")
    vq = VisionTokenizer.from_pretrained(run / "vq" / "vision_tokenizer", device=device)
    seq_file = run / "sequences.npz"
    split_episodes = None  # read from disk once, and only when needed (building sequences, probing)
    if not seq_file.exists():
        t = time.perf_counter()
        split_episodes = episodes(data)
        save_sequences(seq_file, build_sequences(split_episodes, tok, vq, augment, negatives=contrast_weight > 0))
        print(f"sequences built in {time.perf_counter() - t:.0f}s", flush=True)
    seqs = load_sequences(seq_file)
    if contrast_weight > 0 and "train_negatives" not in seqs:
        raise ValueError(f"{seq_file} was built without negatives: remove it to rebuild with them")
    print(
        f"sequences: {len(seqs['train'])} train, {len(seqs['held_out'])} held out, "
        f"max {max(len(s) for s, _ in seqs['train'])} tokens",
        flush=True,
    )
    config = config_for_tokenizer(tok, **LM_SHAPE)
    torch.manual_seed(0)
    if init is not None:
        lm = Emu35.from_pretrained(init, dtype=torch.float32).requires_grad_(True)  # loaded frozen, for inference
        if lm.config.vocab_size != config.vocab_size:
            raise ValueError(
                f"{init}: vocabulary of {lm.config.vocab_size} tokens, this recipe's is {config.vocab_size}"
            )
    else:
        lm = Emu35(config)
        with torch.no_grad():
            for n, p in lm.named_parameters():
                p.fill_(1.0) if n.endswith("norm.weight") else p.normal_(0.0, 0.02)
    lm = lm.to(device)
    print(f"lm: {sum(p.numel() for p in lm.parameters()):,} params", flush=True)
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch,
        lr=lr,
        warmup=200,
        max_len=2560,
        log_every=25,
        ckpt_every=500,
        input_noise=input_noise,
        change_weight=change_weight,
        group_by_length=True,
        contrast_weight=contrast_weight,
    )
    train = seqs["train"]
    negatives = seqs.get("train_negatives") if contrast_weight > 0 else None
    trainer = Trainer(lm, [s for s, _ in train], run / "lm", cfg, loss_from=[n for _, n in train], negatives=negatives)
    hist = trainer.fit(until=until)
    if hist and hist[-1]["step"] == steps:
        split_episodes = split_episodes or episodes(data)
        facts = {
            "train_s": trainer.elapsed_s(),
            "device": device_name(device),
            "train_sequences": len(train),
            "episodes": episode_counts(split_episodes),
            "input_noise": input_noise,
            "peak_lr": lr,
            "change_weight": change_weight,
            "contrast_weight": contrast_weight,
            **({"init": str(init)} if init is not None else {}),
        }
        result = write_lm_result(
            run, lm, tok, vq, seqs["held_out"], split_episodes[1], steps, hist[-1]["loss"], facts, probe_n
        )
        print(result, flush=True)
    return hist


def episode_counts(split_episodes: tuple) -> dict:
    """How many recorded episodes each split of `episodes(data)` holds (the model card's data line)."""
    return dict(zip(("vla_train", "vla_held_out", "explore_train", "explore_held_out"), map(len, split_episodes)))


def write_lm_result(
    run: Path,
    lm: Emu35,
    tok: TextTokenizer,
    vq: VisionTokenizer,
    held_seqs: list,
    held: list,
    steps: int,
    train_loss: float | None,
    facts: dict | None = None,
    probe_n: int = 32,
) -> dict:
    """`run/lm/lm_result.json`, the model card's source: losses and free-running probes on held-out episodes,
    plus `facts` about the run (training seconds, device, sequence count) where known."""
    result = {"steps": steps, "train_loss": train_loss, **(facts or {}), "held_out_loss": held_out_loss(lm, held_seqs)}
    result["held_out_sequences"] = len(held_seqs)
    if probe_n:  # minutes of free-running plans; 0 leaves them to `train result` / `train probe` elsewhere
        result["probe"], result["grounding"] = probe_held_out(lm, tok, vq, held, probe_n)
    (run / "lm" / "lm_result.json").write_text(json.dumps(result, indent=2))
    return result


def result_of_stopped_run(
    data: Data, run: Path, bundle: Path, step: int, probe_n: int = 32, device: str = "cpu"
) -> dict:
    """lm_result.json for a run stopped before its last step (a time box ran out) and packaged from the checkpoint
    of `step` into `bundle`: the training loss is the loss log's at that step, the held-out loss and probes are
    measured on `bundle` itself."""
    log = [json.loads(x) for x in (run / "lm" / "loss.jsonl").read_text().splitlines()]
    train_loss = next((r["loss"] for r in reversed(log) if r["step"] <= step), None)  # None: none logged yet
    tok = TextTokenizer.from_pretrained(bundle / "tokenizer")
    vq = VisionTokenizer.from_pretrained(bundle / "vision_tokenizer", device=device)
    lm = Emu35.from_pretrained(bundle / "model", dtype=torch.float32, device=device)
    split_episodes = episodes(data)
    held_seqs = held_out_sequences(split_episodes, tok, vq)
    facts = {"episodes": episode_counts(split_episodes)}
    ck = run / "lm" / "checkpoint" / "trainer.json"
    meta = json.loads(ck.read_text()) if ck.is_file() else {}
    if meta.get("step") == step:  # the checkpoint packaged is at hand: its training time
        facts["train_s"] = meta.get("elapsed_s")
    return write_lm_result(run, lm, tok, vq, held_seqs, split_episodes[1], step, train_loss, facts, probe_n)


def package(run: Path, out: Path, card: str = "") -> Path:
    """The shipped bundle, in the official layouts: model/ (bf16 safetensors), tokenizer/, vision_tokenizer/."""
    if out.exists():
        shutil.rmtree(out)
    lm = Emu35.from_pretrained(run / "lm" / "checkpoint" / "model", dtype=torch.bfloat16)
    save_emu35(lm, out / "model")
    shutil.copytree(run / "tokenizer", out / "tokenizer")
    vq = VisionTokenizer.from_pretrained(run / "vq" / "vision_tokenizer", dtype=torch.float16)
    vq.save_pretrained(out / "vision_tokenizer")
    if card:
        (out / "MODEL_CARD.md").write_text(card)
    return out


def vq_psnr(run: Path, data: Data) -> float:
    vq = VisionTokenizer.from_pretrained(run / "vq" / "vision_tokenizer")
    return psnr(vq, frames_split(data)[1])
