"""The Emu3.5-mini recipe: collect -> train the IBQ tokenizer -> build sequences -> train the decoder -> package.

Each stage writes into one run directory and resumes where it stopped, so a long run survives interruption and a
time-boxed machine can run it in slices (`--until`).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import save_emu35
from model.random_checkpoint import config_for_tokenizer
from model.text_tokenizer import TextTokenizer, byte_level_ranks, vision_token_list
from model.train import TrainConfig, Trainer
from model.train_vq import VQTrainConfig, psnr, train_vq
from model.transformer import Emu35
from model.vision_tokenizer import VisionTokenizer, tiny_vision_config

from .collect import load
from .sequences import vla_sequences

IMAGE_SIZE = 128  # simulator frames; 16x downsampling -> 8 x 8 codes per image
N_CODES = 1024
VQ_SHAPE = dict(
    n_embed=N_CODES,
    embed_dim=32,
    ch=32,
    ch_mult=(1, 1, 2, 2, 4),
    num_res_blocks=2,
    z_channels=32,
    attn_resolutions=(8,),
    resolution=IMAGE_SIZE,
)
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


def split(episodes, held_out_fraction: float = 0.05, seed: int = 0):
    idx = list(range(len(episodes)))
    random.Random(seed).shuffle(idx)
    n = max(1, int(len(idx) * held_out_fraction))
    return [episodes[i] for i in idx[n:]], [episodes[i] for i in idx[:n]]


def stage_vq(data: Path, run: Path, steps: int, batch: int, device: str, until: int | None = None) -> dict:
    episodes = load(data)
    train, held = split(episodes)
    frames = np.concatenate([f for _, f in train])
    held_frames = np.concatenate([f for _, f in held])
    torch.manual_seed(0)
    vq = VisionTokenizer(tiny_vision_config(**VQ_SHAPE)).to(device)
    cfg = VQTrainConfig(steps=steps, batch_size=batch, lr=4e-4, warmup=200, log_every=50, ckpt_every=500)
    print(
        f"vq: {len(frames)} training frames, {len(held_frames)} held-out, {sum(p.numel() for p in vq.parameters()):,}"
        " params",
        flush=True,
    )
    return train_vq(vq, frames, held_frames, run / "vq", cfg, until=until)


def stage_lm(data: Path, run: Path, steps: int, batch: int, device: str, until: int | None = None) -> list[dict]:
    tok = TextTokenizer(byte_level_ranks(), vision_token_list(N_CODES))
    tok.save_pretrained(run / "tokenizer")
    vq = VisionTokenizer.from_pretrained(run / "vq" / "vision_tokenizer", device=device)
    seq_file = run / "sequences.json"
    if seq_file.exists():
        seqs = json.loads(seq_file.read_text())
    else:
        t = time.perf_counter()
        train, held = split(load(data))
        seqs = {"train": vla_sequences(train, tok, vq), "held_out": vla_sequences(held, tok, vq)}
        seq_file.write_text(json.dumps(seqs))
        print(
            f"sequences: {len(seqs['train'])} train, {len(seqs['held_out'])} held out, "
            f"max {max(map(len, seqs['train']))} tokens, {time.perf_counter() - t:.0f}s",
            flush=True,
        )
    config = config_for_tokenizer(tok, **LM_SHAPE)
    torch.manual_seed(0)
    lm = Emu35(config)
    with torch.no_grad():
        for n, p in lm.named_parameters():
            p.fill_(1.0) if n.endswith("norm.weight") else p.normal_(0.0, 0.02)
    lm = lm.to(device)
    print(f"lm: {sum(p.numel() for p in lm.parameters()):,} params", flush=True)
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=1e-3, warmup=200, max_len=2048, log_every=25, ckpt_every=500)
    return Trainer(lm, seqs["train"], run / "lm", cfg).fit(until=until)


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


def vq_psnr(run: Path, data: Path) -> float:
    _, held = split(load(data))
    vq = VisionTokenizer.from_pretrained(run / "vq" / "vision_tokenizer")
    return psnr(vq, np.concatenate([f for _, f in held]))
