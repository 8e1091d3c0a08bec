"""Proto events -> the typed results of `types.py`, shared by the sync and asyncio clients."""

from __future__ import annotations

from .images import from_proto
from .proto import exploration_pb2, generation_pb2, planner_pb2
from .types import (
    ExploreTurn,
    ExploreView,
    GeneratedImage,
    Generation,
    ImageProgress,
    Plan,
    Subgoal,
    TextChunk,
    Usage,
)


class PlanBuilder:
    """Feed PlanEvents; `typed()` gives what a stream yields, `plan` the finished Plan."""

    def __init__(self, instruction: str):
        self.instruction, self.subgoals, self.plan = instruction, [], None

    def typed(self, ev: planner_pb2.PlanEvent):
        kind = ev.WhichOneof("event")
        if kind == "subgoal_delta":
            return TextChunk(ev.subgoal_delta.index, ev.subgoal_delta.text)
        if kind == "keyframe_progress":
            p = ev.keyframe_progress
            return ImageProgress(p.index, p.rows_done, p.rows_total)
        if kind == "subgoal_completed":
            s = ev.subgoal_completed.subgoal
            image, codes = from_proto(s.keyframe)
            sub = Subgoal(s.index, s.text, s.chain_of_thought, image, codes)
            self.subgoals.append(sub)
            return sub
        if kind == "finished":
            f = ev.finished
            usage = Usage.from_proto(f.usage)
            self.plan = Plan(self.instruction, list(self.subgoals), f.trailing_text, f.global_chain_of_thought, usage)
            return self.plan
        return None  # keyframe_started, chain_of_thought (also in the finished plan)


class GenerationBuilder:
    def __init__(self, task: str, prompt: str):
        self.task, self.prompt, self.images, self.result = task, prompt, [], None

    def typed(self, ev: generation_pb2.GenerateEvent):
        kind = ev.WhichOneof("event")
        if kind == "text":
            return TextChunk(len(self.images), ev.text.text)
        if kind == "image_progress":
            p = ev.image_progress
            return ImageProgress(p.index, p.rows_done, p.rows_total)
        if kind == "image":
            image, codes = from_proto(ev.image.image)
            g = GeneratedImage(ev.image.index, ev.image.caption, image, codes)
            self.images.append(g)
            return g
        if kind == "finished":
            f = ev.finished
            self.result = Generation(self.task, self.prompt, f.text, list(self.images), Usage.from_proto(f.usage))
            return self.result
        return None


class TurnBuilder:
    def __init__(self, command: str):
        self.command, self.views, self.result = command, [], None

    def typed(self, ev: exploration_pb2.ExploreEvent):
        kind = ev.WhichOneof("event")
        if kind == "narration":
            return TextChunk(len(self.views), ev.narration.text)
        if kind == "view_progress":
            p = ev.view_progress
            return ImageProgress(p.index, p.rows_done, p.rows_total)
        if kind == "view":
            v = ev.view
            image, codes = from_proto(v.image)
            view = ExploreView(v.turn, v.index, v.narration, image, codes)
            self.views.append(view)
            return view
        if kind == "turn_finished":
            f = ev.turn_finished
            self.result = ExploreTurn(
                f.turn,
                self.command,
                f.narration,
                list(self.views),
                Usage.from_proto(f.usage),
                f.context_tokens,
                f.context_limit,
            )
            return self.result
        return None
