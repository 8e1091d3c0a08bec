"""Speculative Jacobi decoding on a model that has learned something: acceptance on real image-token statistics.

Random weights say nothing about how often drafts are accepted (benchmarks/image_time.py). This trains a small
decoder, on a CPU in minutes, on the token grids of real simulator frames (our MuJoCo and PyBullet scenes at 128x128,
through a small random vision tokenizer, 16x downsampling: 8x8 codes of 1,024), written as t2i answers, then decodes
images with the spec's kind of sampling (temperature 1, top-k a few percent of the codebook, as 5,120 of 131,072 is)
one token at a time and with Jacobi windows, and reports tokens per forward and time per image. The model is far
smaller and its images far simpler than Emu3.5's, so the rate is indicative, not a prediction.

    python benchmarks/jacobi_trained.py --episodes 400 --steps 1500 --out r.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.decode import write_record  # noqa: E402
from model.engine import Engine, GenerationRequest  # noqa: E402
from model.prompts import task_prompt  # noqa: E402
from model.random_checkpoint import config_for_tokenizer, random_emu35, tiny_ranks  # noqa: E402
from model.sampling import SamplingParams  # noqa: E402
from model.sequence import image_string  # noqa: E402
from model.text_tokenizer import TextTokenizer, vision_token_list  # noqa: E402
from model.train import lm_loss, token_weights  # noqa: E402
from model.vision_tokenizer import VisionTokenizer, tiny_vision_config  # noqa: E402

CODES = 1024


def frames(n_episodes: int, workers: int) -> tuple[np.ndarray, list[str]]:
    """Every recorded frame of n expert episodes (all task families, both engines) and its family name."""
    import sim_envs
    from emu35_robot.training.collect import collect, load

    out = Path(tempfile.mkdtemp(prefix="jacobi-frames-"))
    per_env = max(1, n_episodes // len(sim_envs.ENV_IDS))
    collect(out, list(sim_envs.ENV_IDS), range(per_env), size=128, progress=False, workers=workers)
    imgs, names = [], []
    for rec, f in load(out):
        imgs += list(f)
        names += [rec.family] * len(f)
    return np.stack(imgs), names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=400)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--images", type=int, default=24, help="images decoded per window")
    ap.add_argument("--windows", default="0,4,8,16")
    ap.add_argument("--top-k", type=int, default=40, help="of 1,024 codes (the spec: 5,120 of 131,072)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)

    t0 = time.perf_counter()
    imgs, names = frames(args.episodes, args.workers)
    vq = VisionTokenizer(tiny_vision_config(n_embed=CODES)).eval()  # random: a fixed map from patches to codes
    with torch.no_grad():
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
        codes = torch.cat([vq.encode(x[i : i + 64]) for i in range(0, len(x), 64)]).numpy()  # [N, 8, 8]
    tok = TextTokenizer(tiny_ranks(), vision_token_list(CODES))
    seqs = [
        [*tok.encode(task_prompt("t2i", name) + image_string(tok, c)), tok.eos_id]  # as Engine prompts it
        for c, name in zip(codes, names)
    ]
    L = max(map(len, seqs))
    data = torch.full((len(seqs), L), tok.pad_id)
    for i, s in enumerate(seqs):
        data[i, : len(s)] = torch.tensor(s)
    config = config_for_tokenizer(tok, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=64)  # fmt: skip
    lm = random_emu35(config, seed=0)
    print(f"{len(seqs)} frames ({time.perf_counter() - t0:.0f} s), {len(set(map(tuple, codes.reshape(-1, 64))))} "
          f"distinct grids, {sum(p.numel() for p in lm.parameters()):,} params", flush=True)  # fmt: skip

    opt = torch.optim.AdamW(lm.parameters(), lr=2e-3, weight_decay=0.0)
    vs, ve = tok.visual_start, tok.visual_start + CODES
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    lm.train()
    for step in range(args.steps):
        ids = data[torch.randint(len(data), (args.batch,), generator=g)]
        for group in opt.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        loss = lm_loss(lm, ids, token_weights(ids, vs, ve, tok.pad_id, 1.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    lm.eval()

    eng = Engine(lm, tok, vq, max_len=512)
    sampling = SamplingParams(temperature=1.0, top_k=args.top_k)
    rows = []
    for window in (int(w) for w in args.windows.split(",")):
        fwd = gen = 0
        t = time.perf_counter()
        for i in range(args.images):
            req = GenerationRequest(task="t2i", question=sorted(set(names))[i % len(set(names))], image_size=(8, 8),
                                    image_sampling=sampling, cfg_scale=1.0, seed=i, jacobi_window=window,
                                    max_new_tokens=2 + 3 + 8 * 9, logit_bias={tok.boi_id: 100.0})  # fmt: skip
            fin = list(eng.generate(req))[-1]
            fwd += fin.timings["decode_forwards"]
            gen += fin.generated_tokens - 1
        dt = (time.perf_counter() - t) / args.images
        rows.append({"window": window, "tokens_per_forward": gen / fwd, "s_per_image": dt})
        print(f"window {window:>2}: {gen / fwd:.2f} tokens/forward, {1000 * dt:.0f} ms per image", flush=True)
    fields = dict(frames=len(seqs), train_steps=args.steps, final_loss=loss.item(), top_k=args.top_k, results=rows)
    write_record(args.out, torch.device("cpu"), **fields)


if __name__ == "__main__":
    main()
