"""Training on tiny configs: loss goes down, checkpoints resume exactly, LoRA and the IBQ tokenizer train."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from model import Emu35
from model.lora import apply_lora, load_lora, merge_lora, save_lora
from model.random_checkpoint import config_for_tokenizer, random_emu35, write_tokenizer
from model.sequence import encode_image
from model.train import (
    TrainConfig,
    Trainer,
    changed_tokens,
    collate,
    contrast_loss,
    corrupt_visual,
    lm_loss,
    mask_prompts,
    token_ce,
    token_weights,
)
from model.train_vq import (
    VQTrainConfig,
    colour_mask,
    encode_frames,
    ibq_straight_through,
    psnr,
    reconstruction_loss,
    train_vq,
)
from model.vision_tokenizer import VisionTokenizer, tiny_vision_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tok = write_tokenizer(tmp_path_factory.mktemp("tok"), 64)
    return tok, config_for_tokenizer(tok, num_hidden_layers=2, hidden_size=64, intermediate_size=128)


def sequences(tok, n=24, seed=0):
    """Interleaved sequences with a learnable pattern: text, then an image whose codes repeat the text's length."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = " ".join(rng.choice(["pick", "place", "red", "blue", "block"], size=rng.integers(2, 5)))
        code = len(words) % 64
        ids = [
            tok.bos_id,
            *tok.encode(words),
            tok.boi_id,
            *tok.encode("1*2"),
            tok.img_id,
            tok.code_to_id(code),
            tok.code_to_id(code),
            tok.eoi_id,
            tok.eos_id,
        ]
        out.append(ids)
    return out


def test_token_weights(tiny):
    tok, cfg = tiny
    ids = torch.tensor([[tok.bos_id, 5, tok.code_to_id(3), tok.pad_id]])
    w = token_weights(
        ids, cfg.visual_token_start, cfg.visual_token_start + cfg.num_visual_tokens, cfg.pad_token_id, 0.5
    )
    assert w.tolist() == [[1.0, 1.0, 0.5, 0.0]]


def test_prompt_tokens_carry_no_loss():
    w = torch.ones(2, 5)
    assert mask_prompts(w, [2, 0]).tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]


def test_weighted_loss_matches_manual(tiny):
    tok, cfg = tiny
    lm = random_emu35(cfg, seed=1, std=0.1)
    ids = torch.tensor(sequences(tok, 2)[0])[None]
    w = torch.rand(ids.shape)
    with torch.no_grad():
        logits = lm(ids[:, :-1]).logits[0]
        ce = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
        want = (ce * w[0, 1:]).sum() / w[0, 1:].sum()
        torch.testing.assert_close(lm_loss(lm, ids, w), want)


def test_changed_tokens_marks_what_differs_from_the_image_before(tiny):
    """A view, text, a key-frame with one code changed, a key-frame of another size (not compared), then one more
    of that size with two codes changed; a second row is the first row's tail, so the comparison is per row."""
    tok, cfg = tiny
    visual = (cfg.visual_token_start, cfg.visual_token_start + cfg.num_visual_tokens)
    view = np.arange(6).reshape(2, 3)
    key1 = view.copy()
    key1[1, 2] = 40
    other = np.arange(4).reshape(2, 2)
    key2 = other.copy()
    key2[0, 0], key2[1, 1] = 50, 51
    parts = [encode_image(tok, view), tok.encode(" place it"), encode_image(tok, key1), encode_image(tok, other)]
    ids = [x for p in parts for x in p] + encode_image(tok, key2) + [tok.eos_id]
    tail = encode_image(tok, key1) + [tok.pad_id] * (len(ids) - len(encode_image(tok, key1)))
    got = changed_tokens(torch.tensor([ids, tail]), tok.img_id, visual)
    marked = [tok.id_to_code(ids[i]) for i in torch.nonzero(got[0]).flatten().tolist()]
    assert marked == [40, 50, 51]
    assert not got[1].any()  # a row's first image has nothing before it


def test_corrupt_visual_replaces_only_trained_visual_tokens(tiny):
    tok, cfg = tiny
    visual = (cfg.visual_token_start, cfg.visual_token_start + cfg.num_visual_tokens)
    ids = torch.tensor([[tok.bos_id, 5, 6] + [tok.code_to_id(i % 64) for i in range(2000)] + [tok.pad_id]])
    w = token_weights(ids, *visual, cfg.pad_token_id, 0.5)
    w = mask_prompts(w, [1000])  # the first 1000 tokens are prompt: their images are never corrupted
    assert torch.equal(corrupt_visual(ids, w, visual, 0.0), ids)
    torch.manual_seed(0)
    out = corrupt_visual(ids, w, visual, 0.25)
    changed = out != ids
    assert not changed[0, :1000].any() and not changed[0, -1]  # prompt and padding untouched
    assert 0.19 < changed[0, 1000:-1].float().mean() < 0.29  # p=0.25 over 1,003 tokens: std 0.014
    assert ((out >= visual[0]) & (out < visual[1]))[changed].all()


def test_length_grouped_epochs_cover_every_sequence_once_and_pad_less(tiny, tmp_path):
    tok, cfg = tiny
    rng = np.random.default_rng(0)
    data = [[tok.bos_id] * int(n) for n in rng.integers(5, 400, size=1000)]  # lengths 5-399
    lm = random_emu35(cfg, seed=0)
    padded = {}
    for grouped in (False, True):
        tr = Trainer(lm, data, tmp_path / str(grouped), TrainConfig(batch_size=8, group_by_length=grouped))
        batches = [tr._next_batch() for _ in range(125)]  # one epoch: 1000 / 8
        assert sorted(i for b in batches for i in b) == list(range(1000))
        padded[grouped] = sum(8 * max(len(data[i]) for i in b) for b in batches)
    real = sum(map(len, data))
    assert real / padded[False] < 0.7 and real / padded[True] > 0.95


@pytest.mark.parametrize("input_noise,grouped", [(0.0, False), (0.3, True)])
def test_train_loss_drops_and_resume_is_exact(tiny, tmp_path, input_noise, grouped):
    tok, cfg = tiny
    data = sequences(tok)
    tc = TrainConfig(
        steps=30, batch_size=4, lr=3e-3, warmup=3, log_every=5, ckpt_every=15, bf16=False, input_noise=input_noise,
        group_by_length=grouped,
    )  # fmt: skip
    lm = random_emu35(cfg, seed=0)
    hist = Trainer(lm, data, tmp_path / "a", tc).fit(progress=False)
    assert hist[-1]["loss"] < 0.6 * hist[0]["loss"]
    assert (tmp_path / "a" / "loss.png").is_file()
    assert Emu35.from_pretrained(tmp_path / "a" / "checkpoint" / "model", dtype=torch.float32) is not None

    # stop at step 15, then resume to 30 in a new Trainer: the same weights as the uninterrupted run
    lm2 = random_emu35(cfg, seed=0)
    Trainer(lm2, data, tmp_path / "b", tc).fit(progress=False, until=15)
    lm3 = random_emu35(cfg, seed=7)  # different init: everything must come from the checkpoint
    h3 = Trainer(lm3, data, tmp_path / "b", tc).fit(progress=False)
    assert h3[-1]["step"] == 30 and [h["step"] for h in h3] == [5, 10, 15, 20, 25, 30]
    for (n, a), (_, b) in zip(lm.state_dict().items(), lm3.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=n)


def test_lora_trains_only_adapters_and_merges(tiny, tmp_path):
    tok, cfg = tiny
    lm = random_emu35(cfg, seed=2, std=0.1)
    base = {k: v.clone() for k, v in lm.state_dict().items()}
    ids = torch.tensor(sequences(tok, 1)[0])[None]
    with torch.no_grad():
        ref = lm(ids).logits
    params = apply_lora(lm, r=4, alpha=8)
    with torch.no_grad():
        torch.testing.assert_close(lm(ids).logits, ref)  # B = 0: starts as the base model
    tc = TrainConfig(steps=20, batch_size=4, lr=1e-2, warmup=2, log_every=5, ckpt_every=100, bf16=False)
    Trainer(
        lm,
        sequences(tok),
        tmp_path,
        tc,
        params=params,
        save_fn=lambda p: save_lora(lm, p / "lora.safetensors"),
    ).fit(progress=False)
    for k, v in lm.state_dict().items():
        if ".lora_" not in k:
            assert torch.equal(v, base[k.replace(".base.", ".")]), k  # base weights frozen
    with torch.no_grad():
        adapted = lm(ids).logits
    assert not torch.allclose(adapted, ref)
    fresh = random_emu35(cfg, seed=2, std=0.1)
    apply_lora(fresh, r=4, alpha=8)
    load_lora(fresh, tmp_path / "checkpoint" / "model" / "lora.safetensors")
    merge_lora(lm)
    with torch.no_grad():
        torch.testing.assert_close(lm(ids).logits, adapted, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fresh(ids).logits, adapted, atol=1e-4, rtol=1e-4)


def test_ibq_straight_through_uses_inner_product_and_reaches_the_whole_codebook():
    E = torch.randn(16, 4, requires_grad=True)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    z_q, codes, _ = ibq_straight_through(z, E)
    assert torch.equal(codes, torch.einsum("bdhw,nd->bhwn", z, E).argmax(-1))
    torch.testing.assert_close(z_q, E[codes].permute(0, 3, 1, 2))  # forward: the hard code vectors
    z_q.sum().backward()
    assert (E.grad.abs().sum(1) > 0).all()  # backward: every code gets a gradient


def test_vq_training_improves_and_resumes(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.zeros((24, 32, 32, 3), dtype=np.uint8)  # flat scenes with a coloured square, like the simulator
    for f in frames:
        f[:] = rng.integers(60, 200, 3)
        x, y = rng.integers(0, 20, 2)
        f[y : y + 12, x : x + 12] = rng.integers(0, 255, 3)
    torch.manual_seed(0)
    vq = VisionTokenizer(tiny_vision_config(n_embed=64, embed_dim=8, ch=32, ch_mult=(1, 2)))
    before = psnr(vq, frames[:4])
    cfg = VQTrainConfig(steps=60, batch_size=8, lr=3e-3, warmup=5, log_every=20, ckpt_every=20, bf16=False)
    res = train_vq(vq, frames[4:], frames[:4], tmp_path, cfg, progress=False, until=20)
    assert res["steps"] == 20
    res = train_vq(vq, frames[4:], frames[:4], tmp_path, cfg, progress=False)  # resumes at 20
    lines = [json.loads(x) for x in (tmp_path / "vq_loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [20, 40, 60]
    assert res["psnr"] > before + 2
    again = VisionTokenizer.from_pretrained(tmp_path / "vision_tokenizer")
    assert abs(psnr(again, frames[:4]) - res["psnr"]) < 1e-6


def test_decoder_only_training_keeps_every_code_and_learns_to_reconstruct(tmp_path):
    rng = np.random.default_rng(1)
    frames = np.zeros((24, 32, 32, 3), dtype=np.uint8)
    for f in frames:
        f[:] = rng.integers(60, 200, 3)
        x, y = rng.integers(0, 20, 2)
        f[y : y + 12, x : x + 12] = rng.integers(0, 255, 3)
    torch.manual_seed(0)
    config = tiny_vision_config(n_embed=64, embed_dim=8, ch=32, ch_mult=(1, 2))
    vq = VisionTokenizer(config)
    cfg = VQTrainConfig(steps=30, batch_size=8, lr=3e-3, warmup=5, log_every=10, ckpt_every=10, bf16=False)
    train_vq(vq, frames[4:], frames[:4], tmp_path / "a", cfg, progress=False)  # a trained tokenizer
    codes = encode_frames(vq, frames)
    vq.decoder.load_state_dict(VisionTokenizer(config).decoder.state_dict())  # ... whose decoder starts afresh
    vq.save_pretrained(tmp_path / "start")
    start = VisionTokenizer.from_pretrained(tmp_path / "start")
    dec = replace(cfg, steps=40, decoder_only=True)
    train_vq(vq, frames[4:], frames[:4], tmp_path / "b", dec, progress=False, until=20)
    res = train_vq(vq, frames[4:], frames[:4], tmp_path / "b", dec, progress=False)  # resumes at 20
    tuned = VisionTokenizer.from_pretrained(tmp_path / "b" / "vision_tokenizer")
    assert np.array_equal(encode_frames(tuned, frames), codes)  # the language model's inputs are untouched
    for name in ("encoder", "quant_conv", "quantize"):  # bit for bit
        for a, b in zip(getattr(start, name).state_dict().values(), getattr(tuned, name).state_dict().values()):
            assert torch.equal(a, b), name
    assert res["psnr"] > psnr(start, frames[:4]) + 2
    assert [json.loads(x)["step"] for x in (tmp_path / "b" / "vq_loss.jsonl").read_text().splitlines()] == [
        10,
        20,
        30,
        40,
    ]


def test_colour_weight_emphasises_saturated_pixels():
    x = torch.full((1, 3, 4, 4), 0.2)  # grey
    x[0, :, 0, 0] = torch.tensor([1.0, -1.0, -1.0])  # one red pixel
    assert colour_mask(x).flatten().tolist() == [1.0] + [0.0] * 15
    off_red, off_grey = x.clone(), x.clone()
    off_red[0, :, 0, 0] += 0.5
    off_grey[0, :, 1, 1] += 0.5
    torch.testing.assert_close(reconstruction_loss(off_red, x), reconstruction_loss(off_grey, x))  # unweighted
    assert reconstruction_loss(off_red, x, 20.0) > 10 * reconstruction_loss(off_grey, x, 20.0)


def test_contrast_loss_is_per_image_mean_of_the_extra_cost_under_other_words():
    ce_pos = torch.tensor([[1.0, 1.0, 2.0, 0.5], [1.0, 1.0, 1.0, 1.0]])
    ce_neg = torch.tensor([[3.0, 1.0, 2.5, 9.0], [1.0, 2.0, 4.0, 1.0]])
    changed = torch.tensor([[True, False, True, False], [False, True, True, False]])
    image_no = torch.tensor([[1, 1, 2, 2], [1, 1, 1, 1]])
    loss, d = contrast_loss(ce_pos, ce_neg, changed, image_no, margin=1.0, beta=2.0)
    per_image = torch.tensor([2.0, 0.5, (1.0 + 3.0) / 2])  # row 0 image 1, row 0 image 2, row 1 image 1
    torch.testing.assert_close(d, per_image.mean())
    torch.testing.assert_close(loss, torch.nn.functional.softplus(2.0 * (1.0 - per_image)).mean())
    none, _ = contrast_loss(ce_pos, ce_neg, torch.zeros_like(changed), image_no, 1.0, 2.0)
    assert float(none) == 0.0


def grounding_pairs(tok, n=32, seed=0):
    """(sequence, loss_from) and its negative: a view of two codes, a subgoal naming a colour, a key-frame whose
    first code is that colour's; the negative names another colour (a word of another length in its prompt, so the
    answers sit at different offsets) and keeps the images."""
    rng = np.random.default_rng(seed)
    colours = {"red": 5, "blue": 9, "green": 13, "cyan": 17}

    def image(codes):
        return [tok.boi_id, *tok.encode("1*2"), tok.img_id, *map(tok.code_to_id, codes), tok.eoi_id]

    seqs, negs = [], []
    for _ in range(n):
        a, b = rng.choice(list(colours), size=2, replace=False)
        view = [int(rng.integers(20, 64)), int(rng.integers(20, 64))]
        out = []
        for name in (a, b):
            prompt = [tok.bos_id, *tok.encode(f"USER: move the {name} one"), *image(view)]
            words = tok.encode(f"take {name}")
            words += tok.encode(" ") * (12 - len(words))  # the same answer layout under either name
            answer = [*words, *image([colours[a], view[1]]), tok.eos_id]
            out.append((prompt + answer, len(prompt)))
        seqs.append(out[0])
        negs.append(out[1])
    return seqs, negs


def test_contrast_in_the_trainer_aligns_each_row_with_its_negative(tiny, tmp_path):
    """The batched grounding term equals the one computed sequence by sequence, unpadded: answers matched by
    offset, the negative reading the row's own (here corrupted) image tokens."""
    tok, cfg = tiny
    seqs, negs = grounding_pairs(tok, n=4)
    negs[2] = None  # a sequence without a negative is skipped
    lm = random_emu35(cfg, seed=0)
    tc = TrainConfig(batch_size=4, contrast_weight=1.0, contrast_rows=8, bf16=False)
    tr = Trainer(lm, [s for s, _ in seqs], tmp_path, tc, loss_from=[n for _, n in seqs], negatives=negs)
    ids = collate([s for s, _ in seqs], tok.pad_id, 1024)
    w = token_weights(ids, *tr.visual, tok.pad_id, 0.5)
    inputs = corrupt_visual(ids, w, tr.visual, 0.5, torch.Generator().manual_seed(0))
    changed = changed_tokens(ids, tok.img_id, tr.visual)
    with torch.no_grad():
        loss, d, n = tr._contrast([0, 1, 2, 3], ids, inputs, token_ce(lm, ids, inputs), changed)
        want = []
        for r in (0, 1, 3):
            (pos, a), (neg, b) = seqs[r], negs[r]
            n_ans = len(pos) - a
            neg_in = torch.tensor(neg)
            neg_in[b:] = torch.where(
                (torch.tensor(pos[a:]) >= tr.visual[0]) & (torch.tensor(pos[a:]) < tr.visual[1]),
                inputs[r, a : a + n_ans],
                neg_in[b:],
            )
            ce_p = token_ce(lm, ids[r : r + 1, : len(pos)], inputs[r : r + 1, : len(pos)])[0, a - 1 :]
            ce_n = token_ce(lm, torch.tensor([neg]), neg_in[None])[0, b - 1 :]
            m = changed[r, a : a + n_ans]
            assert m.sum() == 1  # the key-frame's first code differs from the view's
            want.append(float((ce_n - ce_p)[m].mean()))
    assert n == 3
    torch.testing.assert_close(float(d), float(np.mean(want)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        float(loss), float(torch.nn.functional.softplus(2.0 * (1.0 - torch.tensor(want))).mean()), atol=1e-5, rtol=1e-5
    )


def test_contrast_training_raises_the_cost_under_other_words_and_resumes_exactly(tiny, tmp_path):
    tok, cfg = tiny
    seqs, negs = grounding_pairs(tok)
    tc = TrainConfig(
        steps=20, batch_size=8, lr=3e-3, warmup=2, log_every=1, ckpt_every=10, bf16=False, contrast_weight=1.0,
        contrast_rows=4,
    )  # fmt: skip
    args = ([s for s, _ in seqs],)
    kw = dict(loss_from=[n for _, n in seqs], negatives=negs)
    hist = Trainer(random_emu35(cfg, seed=0), *args, tmp_path / "a", tc, **kw).fit(progress=False)
    # nats the recorded key-frame's changed tokens cost more under the other colour: ~0 untrained
    assert abs(hist[0]["contrast_d"]) < 0.2 and hist[-1]["contrast_d"] > 2.0
    Trainer(random_emu35(cfg, seed=0), *args, tmp_path / "b", tc, **kw).fit(progress=False, until=10)
    lm = random_emu35(cfg, seed=3)
    h = Trainer(lm, *args, tmp_path / "b", tc, **kw).fit(progress=False)
    assert h[-1] == {**hist[-1], "tokens_per_s": h[-1]["tokens_per_s"], "elapsed_s": h[-1]["elapsed_s"]}
    with pytest.raises(ValueError, match="answer is not as long"):
        short = [(negs[0][0][:-1], negs[0][1])] * len(seqs)
        Trainer(lm, *args, tmp_path / "c", tc, loss_from=kw["loss_from"], negatives=short)
