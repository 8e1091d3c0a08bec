"""Task prompts of the release (spec §6): a conditional prompt per task and the unconditional prompt used by CFG."""

from __future__ import annotations

TASKS = ("t2i", "x2i", "howto", "story", "explore", "vla")
IMAGE_PLACEHOLDER = "<|IMAGE|>"

_COND = "<|extra_203|>You are a helpful assistant for {task} task. USER: {question}{images} ASSISTANT: <|extra_100|>"
_UNCOND = "<|extra_203|>You are a helpful assistant. USER: {images} ASSISTANT: <|extra_100|>"


def task_prompt(task: str, question: str, image_strings: list[str] | tuple[str, ...] = ()) -> str:
    """The conditional prompt; `image_strings` (see sequence.image_string) are spliced one after another."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return _COND.format(task=task, question=question, images="".join(image_strings))


def unconditional_prompt(image_strings: list[str] | tuple[str, ...] = ()) -> str:
    """Same images, no text: `... USER: <images> ASSISTANT: ...`, or `USER:  ASSISTANT:` (two spaces) without."""
    return _UNCOND.format(images="".join(image_strings))
