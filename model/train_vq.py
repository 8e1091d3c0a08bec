"""Train the IBQ vision tokenizer on frames: reconstruction + quantization losses, Index Backpropagation Quantization.

IBQ (the release's quantizer): logits are inner products <z, e_n> with every code; the forward pass uses the hard
one-hot of the argmax, the backward pass the softmax (straight-through), so gradients reach the whole codebook.
Loss = L1 + L2 reconstruction + beta * commitment + codebook term + a small entropy term that keeps each choice
confident and the batch's usage spread. Two guards against codebook collapse, which a first run on simulator frames
hit (9 of 1024 codes in use at 20.8 dB): codes are kept unit-norm (so no code wins every inner product by its length
alone; argmax of <z, e_n> over unit e_n is what inference computes from the saved weights), and codes unused for a
while are restarted at encoder outputs of the current batch. Checkpoints resume; PSNR on held-out frames is logged.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .train import replace_dir
from .vision_tokenizer import VisionTokenizer


@dataclass
class VQTrainConfig:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    warmup: int = 100
    beta: float = 0.25  # commitment
    entropy_weight: float = 0.1
    tau: float = 0.1
    restart_every: int = 25  # restart codes whose usage (EMA) fell below restart_threshold of uniform
    restart_threshold: float = 0.1
    log_every: int = 50
    ckpt_every: int = 500
    seed: int = 0
    bf16: bool = True
    # Reconstruction weight of saturated pixels (saturation >= 0.2) is 1 + colour_weight. Why: in tabletop frames
    # the blocks and zones are ~3 % of the pixels and the only part a planner reads; with uniform weight a
    # tokenizer at 25 dB PSNR drew every block the same red and dropped pastel zones.
    colour_weight: float = 0.0
    # Train only the pixel decoder (post_quant_conv + decoder) on the frozen encoder's codes. Why: the codes of every
    # image stay exactly what they were, so a language model trained on them needs no retraining, and the decoded
    # key-frames get sharper. The codes are computed once, in float32 as `encode` does at inference.
    decoder_only: bool = False


def colour_mask(x: Tensor) -> Tensor:
    """x [B, 3, H, W] in [-1, 1] -> [B, 1, H, W] 1.0 where the HSV saturation is at least 0.2."""
    rgb = (x.float() + 1) / 2
    hi, lo = rgb.amax(1, keepdim=True), rgb.amin(1, keepdim=True)
    return ((hi - lo) >= 0.2 * hi.clamp(min=1e-3)).float()


def reconstruction_loss(x_rec: Tensor, x: Tensor, colour_weight: float = 0.0) -> Tensor:
    """L1 + MSE, each a weighted mean over pixels (weights 1 + colour_weight on saturated pixels)."""
    d = x_rec.float() - x.float()
    if colour_weight <= 0:
        return d.abs().mean() + d.pow(2).mean()
    w = 1 + colour_weight * colour_mask(x)
    return ((d.abs() + d.pow(2)) * w).mean() / w.mean()


def ibq_straight_through(z: Tensor, codebook: Tensor, tau: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """z [B, D, h, w], codebook [N, D] -> (z_q [B, D, h, w] hard forward / soft backward, codes [B, h, w], probs).
    `tau` sharpens or softens the backward softmax only; the codes are the argmax of the inner products."""
    logits = torch.einsum("bdhw,nd->bhwn", z, codebook) / tau  # [B, h, w, N]
    soft = logits.softmax(-1)
    codes = logits.argmax(-1)
    hard = F.one_hot(codes, codebook.shape[0]).to(soft.dtype)
    onehot = hard - soft.detach() + soft
    z_q = torch.einsum("bhwn,nd->bdhw", onehot, codebook)
    return z_q, codes, soft


@torch.no_grad()
def batch_psnr(x_rec: Tensor, x: Tensor) -> float:
    """PSNR (dB) of a training batch, pixels in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(x_rec.float().clamp(-1, 1), x.float())
    return 10 * math.log10(4.0 / max(float(mse), 1e-10))


def vq_losses(vq: VisionTokenizer, x: Tensor, cfg: VQTrainConfig) -> tuple[Tensor, dict]:
    # unit codes and unit z (cosine similarity, the release's `cosine_similarity` option): the argmax is unchanged
    # at inference (|z| is the same for every code), and the softmax at temperature tau keeps the whole codebook
    # in play instead of saturating on the longest vectors
    z = F.normalize(vq.quant_conv(vq.encoder(x)), dim=1)  # [B, D, h, w]
    E = F.normalize(vq.quantize.embedding.weight, dim=1)
    z_q, codes, soft = ibq_straight_through(z, E, cfg.tau)
    x_rec = vq.decoder(vq.post_quant_conv(z_q))
    rec = reconstruction_loss(x_rec, x, cfg.colour_weight)
    e_hard = E[codes].permute(0, 3, 1, 2)  # [B, D, h, w]
    quant = cfg.beta * F.mse_loss(z, e_hard.detach()) + F.mse_loss(e_hard, z.detach())
    p = soft.reshape(-1, soft.shape[-1]).float()
    sample_entropy = -(p * (p + 1e-8).log()).sum(-1).mean()
    mean_p = p.mean(0)
    batch_entropy = -(mean_p * (mean_p + 1e-8).log()).sum()
    loss = rec + quant + cfg.entropy_weight * (sample_entropy - batch_entropy)
    stats = {
        "rec": float(rec.detach()),
        "quant": float(quant.detach()),
        "psnr": batch_psnr(x_rec, x),
        "codes_used": int(codes.unique().numel()),
    }
    return loss, stats, codes.detach(), z.detach()


def decoder_loss(vq: VisionTokenizer, x: Tensor, codes: Tensor, cfg: VQTrainConfig) -> tuple[Tensor, dict]:
    """x [B, 3, H, W] in [-1, 1], codes [B, h, w] (x's codes, frozen) -> reconstruction loss of decode(codes), stats."""
    x_rec = vq.decoder(vq.post_quant_conv(vq.quantize.embed(codes)))
    rec = reconstruction_loss(x_rec, x, cfg.colour_weight)
    return rec, {"rec": float(rec.detach()), "psnr": batch_psnr(x_rec, x)}


@torch.no_grad()
def restart_dead_codes(vq: VisionTokenizer, usage: Tensor, z: Tensor, threshold: float, g: torch.Generator) -> int:
    """Move codes whose usage share fell below threshold/N onto random encoder outputs z [B, D, h, w]."""
    W = vq.quantize.embedding.weight
    dead = (usage < threshold / W.shape[0]).nonzero().flatten()
    if len(dead) == 0:
        return 0
    pool = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
    pick = torch.randint(0, len(pool), (len(dead),), generator=g).to(pool.device)
    pool = F.normalize(pool, dim=1)
    W[dead] = F.normalize(pool[pick] + 0.01 * torch.randn_like(pool[pick]), dim=1).to(W.dtype)
    usage[dead] = 1.0 / W.shape[0]
    return len(dead)


@torch.no_grad()
def normalize_codebook(vq: VisionTokenizer) -> None:
    """Store the unit codes training used, so inference (argmax of inner products) sees the same codebook."""
    W = vq.quantize.embedding.weight
    W.copy_(F.normalize(W.float(), dim=1).to(W.dtype))


def to_tensor(frames: np.ndarray | Tensor) -> Tensor:
    """uint8 [N, H, W, 3] (numpy or torch, any device) -> float [N, 3, H, W] in [-1, 1]."""
    return torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def encode_batched(vq: VisionTokenizer, frames: np.ndarray | Tensor, mirrored: bool = False, batch: int = 64) -> Tensor:
    """uint8 [N, H, W, 3] (numpy or torch, any device) -> codes [N, h, w] on the tokenizer's device, in batches;
    `mirrored`: the codes of each frame flipped left-right (no flipped copy of the frames is made)."""
    out = []
    for i in range(0, len(frames), batch):
        x = to_tensor(frames[i : i + batch])
        out.append(vq.encode(x.flip(-1) if mirrored else x))
    return torch.cat(out)


def encode_frames(vq: VisionTokenizer, frames: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 [N, H, W, 3] (H, W multiples of 16) -> codes [N, H/16, W/16], in batches."""
    return encode_batched(vq, frames, batch=batch).cpu().numpy()


@torch.no_grad()
def psnr(vq: VisionTokenizer, frames: np.ndarray, batch: int = 64) -> float:
    """PSNR (dB, 8-bit pixels) of encode -> decode over held-out frames."""
    dev = vq.quant_conv.weight.device
    se, n = 0.0, 0
    for i in range(0, len(frames), batch):
        x = to_tensor(frames[i : i + batch]).to(dev)
        y = vq.decode(vq.encode(x))
        a = ((x + 1) * 127.5).round()
        b = ((y.float() + 1) * 127.5).round()
        se += float(((a - b) ** 2).sum())
        n += a.numel()
    return 10 * math.log10(255.0**2 / max(se / n, 1e-10))


@torch.no_grad()
def codes_in_use(vq: VisionTokenizer, frames: np.ndarray) -> int:
    return len(np.unique(encode_frames(vq, frames)))


def train_vq(
    vq: VisionTokenizer,
    frames: np.ndarray,
    held_out: np.ndarray,
    out_dir: str | Path,
    cfg: VQTrainConfig,
    progress: bool = True,
    until: int | None = None,
) -> dict:
    """Train on uint8 frames [N, H, W, 3]; resumes from out_dir/checkpoint; writes the final tokenizer to
    out_dir/vision_tokenizer in the official layout and returns {"psnr": ..., "steps": ...}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = vq.quant_conv.weight.device
    trained = (
        [*vq.post_quant_conv.parameters(), *vq.decoder.parameters()] if cfg.decoder_only else list(vq.parameters())
    )
    opt = torch.optim.AdamW(trained, lr=cfg.lr, betas=(0.5, 0.9), weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    step, done_s = 0, 0.0  # done_s: training seconds of earlier slices (a resumed run keeps counting)
    ck = out / "checkpoint"
    if (ck / "state.json").is_file():
        vq.load_state_dict(VisionTokenizer.from_pretrained(ck / "vision_tokenizer").state_dict())
        st = torch.load(ck / "optimizer.pt", map_location="cpu", weights_only=True)
        opt.load_state_dict(st["optimizer"])
        g.set_state(st["generator"])
        state = json.loads((ck / "state.json").read_text())
        step, done_s = state["step"], state.get("elapsed_s", 0.0)
    vq.train()
    use_bf16 = cfg.bf16 and dev.type == "cuda"
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    frames_dev = torch.from_numpy(frames).to(dev)  # uint8, once: batches are gathered on the device
    if cfg.decoder_only:  # the frozen encoder's codes of every frame, as is and mirrored: [2, N, h, w]
        vq.encoder.eval()
        codes_dev = torch.stack([encode_batched(vq, frames_dev), encode_batched(vq, frames_dev, mirrored=True)])
    n_codes = vq.quantize.embedding.weight.shape[0]
    usage = torch.full((n_codes,), 1.0 / n_codes, device=dev)
    restarted = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train vq", unit="step")
    log = open(out / "vq_loss.jsonl", "a")
    t0 = time.perf_counter()
    elapsed = lambda: done_s + time.perf_counter() - t0  # noqa: E731 - seconds over every slice of the run
    stop = min(cfg.steps, until if until is not None else cfg.steps)
    while step < stop:
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        for grp in opt.param_groups:
            grp["lr"] = lr
        idx = torch.randint(0, len(frames), (cfg.batch_size,), generator=g)
        x = to_tensor(frames_dev[idx.to(dev)])  # [B, 3, H, W] in [-1, 1]
        flip = bool(torch.rand((), generator=g) < 0.5)  # left-right flip: more scenes from the same frames
        if flip:
            x = x.flip(-1)
        if cfg.decoder_only:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                loss, stats = decoder_loss(vq, x, codes_dev[int(flip)][idx.to(dev)], cfg)
        else:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                loss, stats, codes, z = vq_losses(vq, x, cfg)
            usage.mul_(0.9).add_(0.1 * torch.bincount(codes.flatten(), minlength=n_codes).float() / codes.numel())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        if not cfg.decoder_only:  # after the update: restarting rewrites rows the backward pass above still needed
            if cfg.restart_every and (step + 1) % cfg.restart_every == 0 and step + 1 < 0.8 * cfg.steps:
                restarted += restart_dead_codes(vq, usage, z, cfg.restart_threshold, g)
            stats["restarted"] = restarted
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            log.write(
                json.dumps(
                    {
                        "step": step,
                        "loss": float(loss.detach()),
                        "lr": lr,
                        "s": elapsed(),
                        **stats,
                    }
                )
                + "\n"
            )
            log.flush()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(psnr=f"{stats['psnr']:.1f}")
        if step % cfg.ckpt_every == 0 or step in (cfg.steps, stop):
            if not cfg.decoder_only:  # a frozen codebook stays bit-identical
                normalize_codebook(vq)
            tmp = out / "checkpoint.tmp"
            vq.save_pretrained(tmp / "vision_tokenizer")
            torch.save({"optimizer": opt.state_dict(), "generator": g.get_state()}, tmp / "optimizer.pt")
            state = {"step": step, "elapsed_s": elapsed(), "config": asdict(cfg)}
            (tmp / "state.json").write_text(json.dumps(state))
            replace_dir(tmp, ck)
    log.close()
    if bar is not None:
        bar.close()
    vq.eval()
    if not cfg.decoder_only:
        normalize_codebook(vq)
    result = {
        "steps": step,
        "train_s": elapsed(),
        "psnr": psnr(vq, held_out) if len(held_out) else None,
        "codes_used_held_out": codes_in_use(vq, held_out) if len(held_out) else None,
    }
    vq.save_pretrained(out / "vision_tokenizer")
    (out / "vq_result.json").write_text(json.dumps(result, indent=2))
    return result
