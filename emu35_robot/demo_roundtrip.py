"""`emu35-robot demo` without a trained model: the whole model path on a CPU, from files in the official layouts to
decoded images.

Until the embedded Emu3.5-mini ships this runs on a tiny *random* checkpoint written in the official layouts, so the
generated tokens are noise; what it shows is that every stage (loading, tokenizing, image encoding, prompt layout,
cached decoding, stream parsing, image decoding) works end to end and agrees with itself.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from model import Emu35, TextTokenizer, VisionTokenizer, parse_stream, write_random_bundle
from model.prompts import task_prompt
from model.sequence import ImageSegment, image_string


def scene_image(size: int = 128, seed: int = 0) -> Image.Image:
    """A table seen from the front with three coloured blocks: a stand-in camera frame."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size, size), (200, 180, 150))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, size, size // 3], fill=(120, 140, 170))
    for color in [(220, 40, 40), (40, 80, 220), (40, 180, 60)]:
        x, y = rng.integers(8, size - 28), rng.integers(size // 3 + 4, size - 28)
        d.rectangle([int(x), int(y), int(x) + 20, int(y) + 20], fill=color, outline=(30, 30, 30))
    return im


def run_roundtrip(out: str | Path, checkpoint: str | Path | None = None, new_tokens: int = 24, seed: int = 0) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(checkpoint) if checkpoint else out / "random_checkpoint"
    if checkpoint is None:
        print(f"[1/6] writing a tiny random checkpoint in the official layouts to {root}")
        write_random_bundle(root, seed=seed)
    t0 = time.perf_counter()
    lm = Emu35.from_pretrained(root / "model", dtype=torch.float32)
    tok = TextTokenizer.from_pretrained(root / "tokenizer")
    vq = VisionTokenizer.from_pretrained(root / "vision_tokenizer")
    n_params = sum(p.numel() for p in lm.parameters())
    print(
        f"[2/6] loaded model ({n_params:,} params), tokenizer ({tok.vocab_size} ids), vision tokenizer "
        f"({vq.config.n_embed} codes) in {time.perf_counter() - t0:.2f}s"
    )

    scene = scene_image(seed=seed)
    scene.save(out / "scene.png")
    codes = vq.encode_pil(scene, lm.config.image_area)[0]  # [h, w]
    recon = vq.decode_pil(codes)[0]
    recon.save(out / "scene_reconstruction.png")
    print(f"[3/6] encoded the scene {scene.size} into {tuple(codes.shape)} visual codes")

    question = "stack the red block on the blue block"
    prompt = task_prompt("vla", question, [image_string(tok, codes.numpy())])
    ids = torch.tensor([tok.encode(prompt)])
    print(f"[4/6] vla prompt: {ids.shape[1]} tokens")

    g = torch.Generator().manual_seed(seed)
    cache = lm.allocate_cache(1, ids.shape[1] + new_tokens)
    t1 = time.perf_counter()
    with torch.no_grad():
        logits = lm(ids, cache=cache, logits_to_keep=1).logits[:, -1]
        generated = []
        for _ in range(new_tokens):
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=g)  # [1, 1]
            generated.append(int(nxt))
            logits = lm(nxt, cache=cache).logits[:, -1]
        dt = time.perf_counter() - t1
        full = lm(torch.cat([ids, torch.tensor([generated])], 1)).logits[0, -1]
    agree = torch.allclose(full, logits[0], atol=1e-4)
    print(
        f"[5/6] sampled {new_tokens} tokens with the KV cache at {new_tokens / dt:.0f} tok/s; "
        f"cached == full recomputation: {agree}"
    )

    segments = parse_stream(tok, ids[0].tolist() + generated)
    images = [s for s in segments if isinstance(s, ImageSegment)]
    same = bool(images and images[0].complete and np.array_equal(images[0].codes, codes.numpy()))
    summary = {
        "checkpoint": str(root),
        "random_weights": checkpoint is None,
        "question": question,
        "prompt_tokens": ids.shape[1],
        "generated_ids": generated,
        "generated_text": tok.decode(generated),
        "image_codes_shape": list(codes.shape),
        "prompt_image_parsed_back": same,
        "cached_equals_full": bool(agree),
        "tokens_per_s": new_tokens / dt,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    print(f"[6/6] parsed the stream back: {len(segments)} segments, prompt image intact: {same}; wrote {out}/")
    if not (agree and same):
        raise RuntimeError("demo self-check failed: see demo.json")
    return summary
