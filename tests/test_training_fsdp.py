"""FSDP on a tiny config: two CPU processes (gloo) train a sharded model, checkpoint, and resume."""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from tiny import free_port

from model import Emu35
from model.random_checkpoint import config_for_tokenizer, random_emu35, write_tokenizer
from model.train import TrainConfig, Trainer, fsdp_shard

pytest.importorskip("torch.distributed.fsdp")


def _worker(rank: int, world: int, port: int, out: str, tok_dir: str, until: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from model.text_tokenizer import TextTokenizer

    tok = TextTokenizer.from_pretrained(tok_dir)
    cfg = config_for_tokenizer(tok, num_hidden_layers=2, hidden_size=64, intermediate_size=128)
    lm = fsdp_shard(random_emu35(cfg, seed=0), bf16=False)
    seqs = [[tok.bos_id, *tok.encode(f"pick block {i % 3}"), tok.eos_id] for i in range(16)]
    tc = TrainConfig(steps=12, batch_size=2, lr=3e-3, warmup=2, log_every=3, ckpt_every=100, bf16=False)
    Trainer(lm, seqs, out, tc).fit(progress=False, until=until)
    dist.barrier()
    dist.destroy_process_group()


def test_fsdp_two_ranks_train_checkpoint_and_resume(tmp_path):
    tok_dir = tmp_path / "tok"
    write_tokenizer(tok_dir, 16)
    out = tmp_path / "run"
    mp.spawn(_worker, args=(2, free_port(), str(out), str(tok_dir), 6), nprocs=2)
    assert json.loads((out / "checkpoint" / "trainer.json").read_text())["step"] == 6
    mp.spawn(_worker, args=(2, free_port(), str(out), str(tok_dir), 12), nprocs=2)  # resumes at 6
    hist = [json.loads(x) for x in (out / "loss.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [3, 6, 9, 12]
    assert hist[-1]["loss"] < hist[0]["loss"]
    lm = Emu35.from_pretrained(out / "checkpoint" / "model", dtype=torch.float32)  # full weights, official layout
    assert sum(p.numel() for p in lm.parameters()) == sum(p.numel() for p in random_emu35(lm.config).parameters())
