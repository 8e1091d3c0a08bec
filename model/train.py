"""Train or fine-tune the Emu3.5 decoder by next-token loss over interleaved text-and-image sequences.

Visual tokens weigh 0.5 against text 1.0 (the release's recipe); padding weighs 0, and so does a sequence's prompt
when `loss_from` says where its answer starts (supervised fine-tuning: a small model trained on its prompts too
learns to predict the scene from the instruction's words, and then ignores the camera image it is given). bf16
autocast on GPU, gradient accumulation, cosine schedule with warm-up, checkpoints that resume exactly (weights,
optimizer, step, RNG, data order), a JSONL loss log and a loss-curve PNG. Works for a fresh small model, for the full
model with LoRA (model/lora.py), and under FSDP (`torch.distributed`, launched with torchrun).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .checkpoint import save_emu35
from .transformer import Emu35


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8  # sequences per micro-batch
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    visual_weight: float = 0.5
    max_len: int = 1024  # longer sequences are cut (their tail is lost: size data so this never happens)
    # Share of the answer's visual tokens replaced, as inputs only, by random codes (targets stay clean). Why: an
    # image token is mostly predictable from its neighbours in the same image, and with clean neighbours a small
    # model learns that shortcut instead of copying from the reference image, then drifts once it samples its own
    # tokens. Corrupted neighbours make the reference the reliable source.
    input_noise: float = 0.0
    # Extra loss weight of an image token that differs from the token at the same place in the image before it in
    # the sequence (it weighs 1 + change_weight times its visual weight). Why: a key-frame is mostly a copy of the
    # view; the few tokens that change (where the block was, where it goes, the arm) are the plan, and under an
    # even weight their loss is a small share of the image's.
    change_weight: float = 0.0
    # Batches of sequences of similar length (HF's group_by_length). Why: a batch is padded to its longest sequence;
    # our plans run from ~700 to ~2,500 tokens, and random batches of 64 are ~46 % real tokens, grouped ones ~92 %.
    group_by_length: bool = False
    # Contrastive grounding (needs `negatives` in the Trainer): a sequence's negative is the same sequence with other
    # words (e.g. another block named) and the same images. Per image, the mean over its changed tokens of
    # log p(token | words) - log p(token | other words) is pushed above `contrast_margin` nats by
    # softplus(beta * (margin - mean)), weighted `contrast_weight` against the next-token loss, on up to
    # `contrast_rows` rows of each micro-batch. Why: the next-token loss rewards a key-frame guessed from the view
    # alone as much as one read from the words; a small decoder trained by it lifted the wrong block.
    contrast_weight: float = 0.0
    contrast_rows: int = 16
    contrast_margin: float = 1.0
    contrast_beta: float = 2.0
    bf16: bool = True  # autocast on CUDA; CPU runs float32
    log_every: int = 10
    ckpt_every: int = 200
    seed: int = 0


def token_weights(ids: Tensor, visual_start: int, visual_end: int, pad_id: int, visual_weight: float) -> Tensor:
    """Loss weight of predicting each token: 1 text, `visual_weight` visual, 0 padding."""
    w = torch.ones_like(ids, dtype=torch.float32)
    w[(ids >= visual_start) & (ids < visual_end)] = visual_weight
    w[ids == pad_id] = 0.0
    return w


def changed_tokens(ids: Tensor, img_id: int, visual: tuple[int, int]) -> Tensor:
    """[B, T] bool: visual tokens that differ from the token at the same place in the image before them in the row.
    An image's tokens are the visual tokens after its IMG token; only images of the same size are compared."""
    a = ids.cpu().numpy()
    lo, hi = visual
    vis = (a >= lo) & (a < hi)
    image_no = np.cumsum(a == img_id, axis=1)  # [B, T] which image (1, 2, ...) a position is in
    out = np.zeros(a.shape, dtype=bool)
    for b in range(a.shape[0]):
        prev = None
        for j in range(1, int(image_no[b, -1]) + 1):
            pos = np.flatnonzero(vis[b] & (image_no[b] == j))
            if prev is not None and len(pos) == len(prev):
                out[b, pos] = a[b, pos] != a[b, prev]
            prev = pos
    return torch.from_numpy(out).to(ids.device)


def token_ce(lm: Emu35, ids: Tensor, inputs: Tensor | None = None) -> Tensor:
    """[B, T-1] cross-entropy of predicting ids[:, 1:]. `inputs` [B, T]: what the model reads instead of `ids`
    (e.g. corrupted tokens); the targets are always `ids`."""
    logits = lm((ids if inputs is None else inputs)[:, :-1]).logits  # [B, T-1, V]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    return ce.view(ids.shape[0], -1)


def lm_loss(lm: Emu35, ids: Tensor, weights: Tensor, inputs: Tensor | None = None) -> Tensor:
    """Weighted next-token cross-entropy. ids, weights [B, T]; the weight of a target token applies to its loss."""
    return weighted_mean(token_ce(lm, ids, inputs), weights)


def weighted_mean(ce: Tensor, weights: Tensor) -> Tensor:
    """ce [B, T-1] (from token_ce), weights [B, T] of the target tokens -> their weighted mean."""
    w = weights[:, 1:]
    return (ce * w).sum() / w.sum().clamp(min=1.0)


def contrast_loss(
    ce_pos: Tensor, ce_neg: Tensor, changed: Tensor, image_no: Tensor, margin: float, beta: float
) -> tuple[Tensor, Tensor]:
    """Grounding loss of aligned (sequence, negative) rows. ce_pos, ce_neg [N, L] cross-entropies of the same target
    tokens under each row's words and its negative's; changed [N, L] bool (the image tokens compared); image_no
    [N, L] which image of the row a token is in. Per (row, image) with changed tokens: d = mean(ce_neg - ce_pos), the
    nats the image's changed tokens cost more under the other words. Returns (mean softplus(beta * (margin - d)),
    mean d) over those images; (0, 0) when there are none."""
    d = (ce_neg - ce_pos) * changed  # [N, L]
    groups = (torch.arange(len(d), device=d.device)[:, None] * (int(image_no.max()) + 1) + image_no)[changed]
    if groups.numel() == 0:
        zero = ce_pos.sum() * 0
        return zero, zero.detach()
    ids, inverse = torch.unique(groups, return_inverse=True)
    total = torch.zeros(len(ids), device=d.device).index_add(0, inverse, d[changed])
    count = torch.zeros(len(ids), device=d.device).index_add(0, inverse, torch.ones_like(d[changed]))
    mean = total / count  # [images]
    return F.softplus(beta * (margin - mean)).mean(), mean.mean().detach()


def collate(seqs: Sequence[Sequence[int]], pad_id: int, max_len: int) -> Tensor:
    """Right-pad to the longest sequence (causal attention: padding after a sequence never affects it)."""
    T = min(max_len, max(len(s) for s in seqs))
    out = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[:T]  # a list or a 1-D integer array
        out[i, : len(s)] = torch.as_tensor(np.asarray(s), dtype=torch.long)
    return out


def corrupt_visual(
    ids: Tensor, weights: Tensor, visual: tuple[int, int], p: float, gen: torch.Generator | None = None
) -> Tensor:
    """A copy of ids [B, T] whose trained visual tokens (weight > 0) are each replaced, with probability p, by a
    uniformly drawn visual token. `gen`: a CPU generator (the Trainer's, saved in its checkpoints)."""
    if p <= 0:
        return ids
    lo, hi = visual
    pick = (torch.rand(ids.shape, generator=gen) < p).to(ids.device) & (weights > 0) & (ids >= lo) & (ids < hi)
    return torch.where(pick, torch.randint(lo, hi, ids.shape, generator=gen).to(ids.device), ids)


def mask_prompts(weights: Tensor, loss_from: Sequence[int]) -> Tensor:
    """Zero the weight of predicting each row's first `loss_from[i]` tokens. weights [B, T]."""
    pos = torch.arange(weights.shape[1], device=weights.device)[None]
    start = torch.as_tensor(list(loss_from), device=weights.device)[:, None]
    return weights * (pos >= start)


def replace_dir(new: Path, dst: Path) -> None:
    """Put a freshly written checkpoint directory in place; the previous one is removed only once the new one is
    there, so an interruption leaves one complete checkpoint (dst, or dst.old)."""
    import shutil

    if dst.exists():
        old = dst.with_name(dst.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        dst.rename(old)
        new.rename(dst)
        shutil.rmtree(old)
    else:
        new.rename(dst)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def fsdp_shard(lm: Emu35, bf16: bool = True) -> Emu35:
    """Shard every block and the root with FSDP2 (call after torch.distributed.init_process_group, e.g. under
    torchrun). Parameters live sharded across ranks and are gathered one block at a time; with `bf16` on CUDA the
    blocks compute in bf16 and reduce gradients in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kw = {"mp_policy": mp} if mp is not None else {}
    for block in lm.model.layers:
        fully_shard(block, **kw)
    fully_shard(lm, **kw)
    return lm


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


class Trainer:
    """`Trainer(lm, sequences, out_dir, cfg).fit()`; calling fit() again on the same out_dir resumes.

    Under torch.distributed (a model from `fsdp_shard`), every rank draws the same global batch and trains on its
    slice; checkpoints hold full (gathered) weights and optimizer state, written by rank 0."""

    def __init__(
        self,
        lm: Emu35,
        sequences: Sequence[Sequence[int]],
        out_dir: str | Path,
        cfg: TrainConfig,
        params=None,
        save_fn=None,
        loss_from: Sequence[int] | None = None,
        negatives: Sequence[tuple[Sequence[int], int] | None] | None = None,
    ):
        """`loss_from[i]`: tokens of sequence i that are prompt (no loss); None trains on every token.
        `negatives[i]`: (ids, loss_from) of sequence i with other words and the same answer layout (its answer as
        long as sequence i's, the same tokens where those are images), or None; for `cfg.contrast_weight`."""
        self.lm, self.seqs, self.out, self.cfg = lm, sequences, Path(out_dir), cfg
        if loss_from is not None and len(loss_from) != len(sequences):
            raise ValueError(f"loss_from has {len(loss_from)} entries for {len(sequences)} sequences")
        if negatives is not None:
            if loss_from is None or len(negatives) != len(sequences):
                raise ValueError("negatives need loss_from and one entry (or None) per sequence")
            for i, neg in enumerate(negatives):
                if neg is not None and len(neg[0]) - neg[1] != len(sequences[i]) - loss_from[i]:
                    raise ValueError(f"negative {i}: its answer is not as long as its sequence's")
        self.loss_from, self.negatives = loss_from, negatives
        self.out.mkdir(parents=True, exist_ok=True)
        c = lm.config
        self.visual = (c.visual_token_start, c.visual_token_start + c.num_visual_tokens)
        self.pad_id, self.img_id = c.pad_token_id, c.img_token_id
        params = [p for p in (params if params is not None else lm.parameters()) if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=(0.9, 0.95),
        )
        self.rank, self.world = _dist()
        self.save_fn = save_fn or (lambda path, state=None: save_emu35(self.lm, path, state_dict=state))
        self.step = 0
        self.order: list[int] = []
        self.cursor = 0
        self.rng = random.Random(cfg.seed)
        self.noise_gen = torch.Generator().manual_seed(cfg.seed)  # input_noise draws
        self._done_s, self._t_fit = 0.0, None  # training seconds of finished slices; start of the running one

    # ---- data order: a shuffled permutation per epoch, kept in the checkpoint so a resume sees the same batches
    def _next_batch(self) -> list[int]:
        """Indices of this rank's sequences in the next global batch."""
        batch = []
        while len(batch) < self.cfg.batch_size * self.world:
            if self.cursor >= len(self.order):
                self.order = self._epoch_order()
                self.cursor = 0
            batch.append(self.order[self.cursor])
            self.cursor += 1
        return batch[self.rank :: self.world]

    def _epoch_order(self) -> list[int]:
        """A shuffled permutation of the sequences; with `group_by_length`, runs of global-batch size whose lengths
        are close (sorted within shuffled chunks of 64 batches, the batches then shuffled)."""
        order = list(range(len(self.seqs)))
        self.rng.shuffle(order)
        if not self.cfg.group_by_length:
            return order
        n = self.cfg.batch_size * self.world
        batches = []
        for i in range(0, len(order), 64 * n):
            chunk = sorted(order[i : i + 64 * n], key=lambda j: len(self.seqs[j]))
            batches += [chunk[k : k + n] for k in range(0, len(chunk), n)]
        self.rng.shuffle(batches)
        return [j for b in batches for j in b]

    def elapsed_s(self) -> float:
        """Seconds spent training so far, over every slice of a resumed run (up to the checkpoint it resumed)."""
        return self._done_s + (time.perf_counter() - self._t_fit if self._t_fit is not None else 0.0)

    # ---- checkpoints --------------------------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoint"

    def _states(self) -> tuple[dict | None, dict]:
        """(full model state or None when unsharded, full optimizer state); collective under FSDP."""
        if self.world == 1:
            return None, self.opt.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        o = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.lm, options=o), get_optimizer_state_dict(self.lm, self.opt, options=o)

    def save(self) -> None:
        model_state, opt_state = self._states()  # every rank takes part in the gather
        if self.rank == 0:
            self._write(model_state, opt_state)
        if self.world > 1:  # the checkpoint exists on every rank's return (and no rank races ahead to shut down)
            import torch.distributed as dist

            dist.barrier()

    def _write(self, model_state: dict | None, opt_state: dict) -> None:
        tmp = self.out / "checkpoint.tmp"
        tmp.mkdir(exist_ok=True)
        if model_state is None:
            self.save_fn(tmp / "model")
        else:
            self.save_fn(tmp / "model", model_state)
        state = {"optimizer": opt_state, "torch_rng": torch.get_rng_state(), "noise_rng": self.noise_gen.get_state()}
        torch.save(state, tmp / "trainer.pt")
        meta = {
            "step": self.step,
            "elapsed_s": self.elapsed_s(),
            "order": self.order,
            "cursor": self.cursor,
            "rng": self.rng.getstate(),
            "config": asdict(self.cfg),
        }
        (tmp / "trainer.json").write_text(json.dumps(meta, default=list))
        replace_dir(tmp, self.ckpt_dir)

    def try_resume(self, load_fn=None) -> bool:
        """Restore from out_dir/checkpoint if present (weights through `load_fn(path)` or the HF layout)."""
        if not (self.ckpt_dir / "trainer.json").is_file():
            return False
        meta = json.loads((self.ckpt_dir / "trainer.json").read_text())
        if load_fn is not None:
            load_fn(self.ckpt_dir / "model")
        else:
            from safetensors.torch import load_file

            sd = {}
            for f in sorted((self.ckpt_dir / "model").glob("*.safetensors")):
                sd.update(load_file(f))
            if self.world > 1:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

                set_model_state_dict(self.lm, sd, options=StateDictOptions(full_state_dict=True))
            else:
                self.lm.load_state_dict(sd, strict=not self.lm.config.tie_word_embeddings)
        state = torch.load(self.ckpt_dir / "trainer.pt", map_location="cpu", weights_only=True)
        if self.world > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                self.lm, self.opt, state["optimizer"], options=StateDictOptions(full_state_dict=True)
            )
        else:
            self.opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if "noise_rng" in state:  # checkpoints written before input_noise existed lack it
            self.noise_gen.set_state(state["noise_rng"])
        self.step, self.order, self.cursor = meta["step"], meta["order"], meta["cursor"]
        self._done_s = meta.get("elapsed_s", 0.0)
        r = meta["rng"]
        self.rng.setstate((r[0], tuple(r[1]), r[2]))
        return True

    def _contrast(self, idx: list[int], ids: Tensor, inputs: Tensor, ce: Tensor, changed: Tensor):
        """(contrast_loss, mean d, rows) over up to cfg.contrast_rows rows of this micro-batch that have a negative.
        The negative reads the same (corrupted) image tokens as its row, so the two differ only in their words."""
        cfg, dev = self.cfg, ids.device
        rows = [r for r, i in enumerate(idx) if self.negatives[i] is not None][: cfg.contrast_rows]
        if not rows:
            zero = ce.sum() * 0
            return zero, zero.detach(), 0
        negs = [self.negatives[idx[r]] for r in rows]
        neg_ids = collate([n for n, _ in negs], self.pad_id, cfg.max_len).to(dev)
        a = torch.tensor([self.loss_from[idx[r]] for r in rows], device=dev)[:, None]  # answer starts, row
        b = torch.tensor([n for _, n in negs], device=dev)[:, None]  # ... and negative
        n_ans = torch.tensor([len(n) - s for n, s in negs], device=dev)[:, None]
        n_ans = torch.minimum(n_ans, torch.minimum(ids.shape[1] - a, neg_ids.shape[1] - b))  # cut by max_len
        span = torch.arange(int(n_ans.max()), device=dev)[None]  # [1, L]
        valid = span < n_ans  # [N, L]
        pa = (a + span).clamp(max=ids.shape[1] - 1)
        pb = (b + span).clamp(max=neg_ids.shape[1] - 1)
        r = torch.tensor(rows, device=dev)[:, None]
        pos_ids, pos_in = ids[r, pa], inputs[r, pa]
        lo, hi = self.visual
        visual = valid & (pos_ids >= lo) & (pos_ids < hi)
        neg_in = neg_ids.clone()
        rr = torch.arange(len(rows), device=dev)[:, None].expand_as(pb)
        neg_in[rr[visual], pb[visual]] = pos_in[visual]
        ce_neg = token_ce(self.lm, neg_ids, neg_in)  # [N, Tn-1]
        image_no = torch.cumsum(ids[rows] == self.img_id, dim=1)[rr, pa]
        m, beta = cfg.contrast_margin, cfg.contrast_beta
        return (*contrast_loss(ce[r, pa - 1], ce_neg[rr, pb - 1], changed[r, pa] & valid, image_no, m, beta), len(rows))

    # ---- the loop -----------------------------------------------------------------------------------------
    def fit(self, progress: bool = True, until: int | None = None) -> list[dict]:
        """Train to cfg.steps (or stop after step `until`: a time-boxed job; run fit() again to go on)."""
        cfg, lm = self.cfg, self.lm
        stop = min(cfg.steps, until if until is not None else cfg.steps)
        resumed = self.try_resume()
        dev = lm.device
        use_bf16 = cfg.bf16 and dev.type == "cuda"
        contrast = self.negatives is not None and cfg.contrast_weight > 0
        log_path = self.out / ("loss.jsonl" if self.rank == 0 else f"loss.rank{self.rank}.jsonl")
        if not resumed and log_path.exists():
            log_path.unlink()
        lm.train()
        bar = None
        if progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step")
        t0 = self._t_fit = time.perf_counter()
        tokens = 0
        with open(log_path, "a") as log:
            while self.step < stop:
                lr = lr_at(self.step, cfg)
                for g in self.opt.param_groups:
                    g["lr"] = lr
                total = contrast_d = 0.0
                contrast_n = 0  # micro-batches with a contrasted row
                for _ in range(cfg.grad_accum):
                    idx = self._next_batch()
                    host_ids = collate([self.seqs[i] for i in idx], self.pad_id, cfg.max_len)
                    ids = host_ids.to(dev)
                    w = token_weights(ids, *self.visual, self.pad_id, cfg.visual_weight)
                    if self.loss_from is not None:
                        w = mask_prompts(w, [self.loss_from[i] for i in idx])
                    changed = None
                    if cfg.change_weight or contrast:
                        changed = changed_tokens(host_ids, self.img_id, self.visual).to(dev)
                    if cfg.change_weight:
                        w = w * (1 + cfg.change_weight * changed)
                    inputs = corrupt_visual(ids, w, self.visual, cfg.input_noise, self.noise_gen)
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                        ce = token_ce(lm, ids, inputs)
                        loss = weighted_mean(ce, w)
                        if contrast:
                            c_loss, c_d, n = self._contrast(idx, ids, inputs, ce, changed)
                            loss = loss + cfg.contrast_weight * c_loss
                            contrast_d, contrast_n = contrast_d + float(c_d), contrast_n + (n > 0)
                        loss = loss / cfg.grad_accum
                    loss.backward()
                    total += float(loss.detach())
                    tokens += int((w > 0).sum())
                norm = torch.nn.utils.clip_grad_norm_(
                    [p for g in self.opt.param_groups for p in g["params"]], cfg.grad_clip
                )
                norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                self.step += 1
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    rec = {
                        "step": self.step,
                        "loss": total,
                        "lr": lr,
                        "grad_norm": float(norm),
                        "tokens_per_s": tokens / (time.perf_counter() - t0),
                        "elapsed_s": self.elapsed_s(),
                    }
                    if contrast_n:  # nats a key-frame's changed tokens cost more under other words, this step
                        rec["contrast_d"] = contrast_d / contrast_n
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{total:.3f}")
                if self.step % cfg.ckpt_every == 0 or self.step in (cfg.steps, stop):
                    self.save()
        if bar is not None:
            bar.close()
        self._done_s, self._t_fit = self.elapsed_s(), None
        lm.eval()
        history = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
        if self.rank == 0:
            plot_loss(history, self.out / "loss.png")
        return history


def plot_loss(history: list[dict], path: str | Path) -> None:
    """Loss against step as a PNG (matplotlib when installed, else a plain PIL line plot)."""
    if not history:
        return
    steps = [h["step"] for h in history]
    loss = [h["loss"] for h in history]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot(steps, loss)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (weighted CE)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    except ImportError:
        from PIL import Image, ImageDraw

        W, H, m = 600, 350, 40
        im = Image.new("RGB", (W, H), "white")
        d = ImageDraw.Draw(im)
        lo, hi = min(loss), max(loss) if max(loss) > min(loss) else min(loss) + 1
        x0, x1 = steps[0], max(steps[-1], steps[0] + 1)
        pts = [
            (m + (s - x0) / (x1 - x0) * (W - 2 * m), H - m - (v - lo) / (hi - lo) * (H - 2 * m))
            for s, v in zip(steps, loss)
        ]
        d.rectangle([m, m, W - m, H - m], outline="black")
        if len(pts) > 1:
            d.line(pts, fill="blue", width=2)
        d.text((m, 10), f"loss {loss[0]:.3f} -> {loss[-1]:.3f} over {steps[-1]} steps", fill="black")
        im.save(path)
