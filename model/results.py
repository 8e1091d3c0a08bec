"""Turn engine events into a result (text, images, chain-of-thought), and save it as PNG + JSON and as the official
`emu3p5.story` protobuf container."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .engine import Event, Finished, ImageFinished, TextDelta

BOG, EOG = "<|extra_60|>", "<|extra_61|>"  # global chain-of-thought
BOC, EOC = "<|extra_50|>", "<|extra_51|>"  # per-image chain-of-thought
_SPECIAL = re.compile(r"<\|(?:extra_\d+|endoftext|im_start|im_end)\|>")


@dataclass
class ResultImage:
    codes: np.ndarray
    image: Image.Image
    caption: str  # the text right before this image (its subgoal / step), specials and CoT removed
    chain_of_thought: str = ""


@dataclass
class GenerationResult:
    task: str
    question: str
    text: str  # all generated text, specials and chain-of-thought removed
    images: list[ResultImage] = field(default_factory=list)
    global_chain_of_thought: str = ""
    trailing_text: str = ""  # text after the last image
    finished: Finished | None = None


def _split_cot(raw: str) -> tuple[str, str, str]:
    """raw text -> (visible text, global CoT, per-image CoT)."""
    glob = " ".join(m.strip() for m in re.findall(re.escape(BOG) + r"(.*?)(?:" + re.escape(EOG) + "|$)", raw, re.S))
    local = " ".join(m.strip() for m in re.findall(re.escape(BOC) + r"(.*?)(?:" + re.escape(EOC) + "|$)", raw, re.S))
    visible = re.sub(re.escape(BOG) + ".*?(?:" + re.escape(EOG) + "|$)", "", raw, flags=re.S)
    visible = re.sub(re.escape(BOC) + ".*?(?:" + re.escape(EOC) + "|$)", "", visible, flags=re.S)
    return _SPECIAL.sub("", visible).strip(), glob, local


split_chain_of_thought = _split_cot  # public name: streaming callers (the service) split text as images finish


def collect(events: Iterable[Event], task: str = "", question: str = "") -> GenerationResult:
    res = GenerationResult(task=task, question=question, text="")
    raw, visible_parts = "", []
    for e in events:
        if isinstance(e, TextDelta):
            raw += e.text
        elif isinstance(e, ImageFinished):
            text, glob, local = _split_cot(raw)
            if glob:
                res.global_chain_of_thought = " ".join(filter(None, [res.global_chain_of_thought, glob]))
            res.images.append(ResultImage(e.codes, e.image, text, local))
            visible_parts.append(text)
            raw = ""
        elif isinstance(e, Finished):
            res.finished = e
    text, glob, _ = _split_cot(raw)
    if glob:
        res.global_chain_of_thought = " ".join(filter(None, [res.global_chain_of_thought, glob]))
    res.trailing_text = text
    res.text = "\n".join(p for p in visible_parts + [text] if p)
    return res


def to_story(result: GenerationResult, story_id: str = "emu35", reference_images: Iterable[Image.Image] = ()):
    """The official container: one clip; a segment per image holding the text before it, then the trailing text."""
    from .proto import interleave_story_pb2 as pb

    def meta(i: int, im: Image.Image, caption: str = "", cot: str = "", prefix: str = "image") -> pb.ImageMeta:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        img = pb.Image(width=im.width, height=im.height, format=pb.PNG, image_data=buf.getvalue())
        return pb.ImageMeta(image_id=f"{prefix}_{i:03d}", caption=caption, chain_of_thought=cot, image=img)

    story = pb.Story(story_id=story_id, question=result.question, summary=result.global_chain_of_thought)
    story.reference_images.extend(meta(i, im, prefix="reference") for i, im in enumerate(reference_images))
    clip = story.clips.add(clip_id=f"{story_id}_clip_000")
    for i, r in enumerate(result.images):
        seg = clip.segments.add(asr=r.caption)
        seg.images.append(meta(i, r.image, r.caption, r.chain_of_thought))
    if result.trailing_text:
        clip.segments.add(asr=result.trailing_text)
    return story


def save_result(result: GenerationResult, out: str | Path, reference_images: Iterable[Image.Image] = ()) -> Path:
    """out/result.json, out/image_NNN.png, out/story.pb (emu3p5.story.Story)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    refs = list(reference_images)
    for i, r in enumerate(result.images):
        r.image.save(out / f"image_{i:03d}.png")
    f = result.finished
    doc = {
        "task": result.task,
        "question": result.question,
        "text": result.text,
        "global_chain_of_thought": result.global_chain_of_thought,
        "trailing_text": result.trailing_text,
        "images": [
            {
                "file": f"image_{i:03d}.png",
                "caption": r.caption,
                "chain_of_thought": r.chain_of_thought,
                "grid": list(r.codes.shape),
                "codes": r.codes.tolist(),
            }
            for i, r in enumerate(result.images)
        ],
        "finished": None
        if f is None
        else {
            "reason": f.reason,
            "prompt_tokens": f.prompt_tokens,
            "generated_tokens": f.generated_tokens,
            "image_tokens": f.image_tokens,
            "incomplete_image": f.incomplete_image,
            "timings": f.timings,
        },
    }
    (out / "result.json").write_text(json.dumps(doc, indent=2))
    (out / "story.pb").write_bytes(to_story(result, reference_images=refs).SerializeToString())
    return out
