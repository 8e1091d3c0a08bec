"""Planners the harness can evaluate: the gRPC service, and two references that bound the scale.

``oracle`` knows the task (canonical subgoals, key-frames the expert actually reaches); ``random`` knows only the
scene's object names and draws well-formed but uninformed plans. A model worth deploying sits between them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import gymnasium as gym
import numpy as np

import sim_envs  # noqa: F401 - registers the env ids
from sim_envs.executors import Subgoal
from sim_envs.experts import expert_actions
from sim_envs.tasks import parse_subgoal, pick_text, place_text


@dataclass
class PlanContext:
    """What a planner may be asked with. The gRPC planner reads only ``instruction`` and ``image``; the oracle
    also reads the env id, seed and progress (it is privileged by design); random reads the scene's names."""

    instruction: str
    image: np.ndarray  # current front camera, uint8 HxWx3
    env_id: str
    seed: int
    attempt: int  # 0 for the first plan, k for the k-th re-plan
    progress: int  # canonical subgoals reached so far (env's subgoal index)
    blocks: list[str]
    zones: list[str]


@dataclass
class PlanResult:
    subgoals: list[Subgoal]
    latency_s: float  # request to whole plan
    first_subgoal_s: float | None  # request to the first complete subgoal (key-frame included)
    tokens: int = 0  # tokens the model generated (0 for the reference planners)
    error: str = ""  # a planner failure is recorded and ends the episode, it does not crash the run
    info: dict[str, Any] = field(default_factory=dict)
    # the other candidates' subgoals of a consensus plan (GrpcOptions.candidates > 1), in candidate order:
    # EvalConfig.check_keyframes may run one of their key-frames instead of the kept plan's
    alternatives: list[list[Subgoal]] = field(default_factory=list)

    def candidates_at(self, i: int) -> list[Subgoal]:
        """The other candidates' subgoal i, in candidate order (those that have one): what the check may run
        instead of the kept plan's, numbered from 1 in its record."""
        return [a[i] for a in self.alternatives if len(a) > i]


class Planner(Protocol):
    name: str

    def plan(self, ctx: PlanContext) -> PlanResult: ...


class OraclePlanner:
    """Canonical subgoals with the key-frames an expert reaches on a second env reset with the same seed."""

    name = "oracle"

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size
        self._cache: dict[tuple[str, int], tuple[list[str], list[np.ndarray | None]]] = {}

    def _shadow(self, env_id: str, seed: int) -> tuple[list[str], list[np.ndarray | None]]:
        if (env_id, seed) not in self._cache:
            env = gym.make(env_id, image_size=self.image_size, image_obs=False)
            try:
                _, info = env.reset(seed=seed)
                texts = list(info["subgoals"])
                frames: list[np.ndarray | None] = [None] * len(texts)
                for steps, action in enumerate(expert_actions(env)):
                    _, _, terminated, _, info = env.step(action)
                    for k in info["subgoals_completed_now"]:
                        frames[k] = env.unwrapped.render_camera("front")
                    if terminated or steps > 2000:
                        break
            finally:
                env.close()
            self._cache = {(env_id, seed): (texts, frames)}  # one episode at a time: keep only the current one
        return self._cache[(env_id, seed)]

    def plan(self, ctx: PlanContext) -> PlanResult:
        t0 = time.perf_counter()
        texts, frames = self._shadow(ctx.env_id, ctx.seed)
        sgs = [Subgoal(t, f) for t, f in zip(texts[ctx.progress :], frames[ctx.progress :])]
        dt = time.perf_counter() - t0
        return PlanResult(sgs, dt, dt if sgs else None)


class RandomPlanner:
    """Random but well-formed plans: alternating pick / place texts in the task grammar over the scene's objects
    (2 to 6 subgoals), each with a random key-frame: the current view with the subgoal's block erased and painted
    at a random spot of the table, so a key-frame executor acts on it too (and moves things at random)."""

    name = "random"

    def __init__(self, base_seed: int = 0) -> None:
        self.base_seed = base_seed

    def plan(self, ctx: PlanContext) -> PlanResult:
        t0 = time.perf_counter()
        rng = np.random.default_rng([self.base_seed, ctx.seed, ctx.attempt])
        n = 2 * int(rng.integers(1, 4))
        sgs = []
        for i in range(n):
            obj = ctx.blocks[int(rng.integers(len(ctx.blocks)))]
            if i % 2 == 0:
                text = pick_text(obj)
            else:
                targets = ctx.zones + [b for b in ctx.blocks if b != obj]
                text = place_text(obj, targets[int(rng.integers(len(targets)))])
            kf = _move_block_randomly(ctx.image, obj.split()[0], rng)
            sgs.append(Subgoal(text, kf))
        dt = time.perf_counter() - t0
        return PlanResult(sgs, dt, dt)


def _move_block_randomly(image: np.ndarray, colour: str, rng: np.random.Generator) -> np.ndarray:
    """The view with the ``colour`` block's pixels replaced by the surrounding table colour and a block-sized
    patch of that colour drawn at a random place in the lower two thirds (where the table is)."""
    from sim_envs.keyframe_vision import colour_mask
    from sim_envs.scene import PALETTE

    kf = image.copy()
    h, w = kf.shape[:2]
    mask = cv2.dilate(colour_mask(kf, colour), np.ones((3, 3), np.uint8)).astype(bool)
    if mask.any():
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = max(0, ys.min() - 3), ys.max() + 4, max(0, xs.min() - 3), xs.max() + 4
        ring = kf[y0:y1, x0:x1][~mask[y0:y1, x0:x1]]
        kf[mask] = np.median(ring, axis=0).astype(np.uint8) if len(ring) else kf[~mask].mean(axis=0)
    s = max(2, h // 16)
    y, x = int(rng.integers(h // 3, h - s)), int(rng.integers(0, w - s))
    kf[y : y + s, x : x + s] = np.round(np.asarray(PALETTE[colour]) * 255).astype(np.uint8)
    return kf


@dataclass
class GrpcOptions:
    """Decoding options forwarded to the service (None: the server's default)."""

    image_size: tuple[int, int] | None = None  # token grid of key-frames
    max_subgoals: int = 0
    max_new_tokens: int | None = None
    cfg_scale: float | None = None
    seed: int | None = None  # None: derived from the episode seed and attempt, so runs reproduce
    logit_bias: dict[int, float] = field(default_factory=dict)
    jacobi_window: int | None = None  # speculative Jacobi decoding of key-frames (same distribution, fewer forwards)
    image_sampling: tuple[float, int, float] | None = None  # key-frame (temperature, top_k, top_p); 0 = greedy
    text_sampling: tuple[float, int, float] | None = None  # subgoal texts, likewise
    timeout_s: float | None = 600.0
    token: str | None = None
    candidates: int = 1  # > 1: that many plans at once, the consensus kept (PlannerClient.plan_consensus)
    candidate_sampling: tuple[float, int, float] | None = None  # the extra candidates' key-frames; None: the client's


def _subgoals(plan, w: int, h: int) -> list[Subgoal]:
    """A service plan's subgoals with key-frames at the camera's size (w, h)."""
    out = []
    for s in plan.subgoals:
        kf = None
        if s.image is not None:
            kf = cv2.resize(np.asarray(s.image.convert("RGB")), (w, h), interpolation=cv2.INTER_AREA)
        out.append(Subgoal(s.text.strip(), kf))
    return out


class GrpcPlanner:
    """Our planning service, as any user reaches it: ``PlannerClient.plan_stream`` with the camera image."""

    def __init__(self, address: str, options: GrpcOptions | None = None) -> None:
        from emu35_robot.client import PlannerClient  # imported here: it pulls in torch, which the others skip

        self.name = address
        self.options = options or GrpcOptions()
        self.client = PlannerClient(address, token=self.options.token, timeout=self.options.timeout_s)

    def plan(self, ctx: PlanContext) -> PlanResult:
        import grpc

        from emu35_robot.types import Options, Plan, SamplingParams
        from emu35_robot.types import Subgoal as RemoteSubgoal

        o = self.options
        seed = o.seed if o.seed is not None else ctx.seed * 64 + ctx.attempt
        opts = Options(
            image_size=o.image_size,
            max_new_tokens=o.max_new_tokens,
            cfg_scale=o.cfg_scale,
            seed=seed,
            logit_bias=dict(o.logit_bias),
            jacobi_window=o.jacobi_window,
            image_sampling=SamplingParams(*o.image_sampling) if o.image_sampling else None,
            text_sampling=SamplingParams(*o.text_sampling) if o.text_sampling else None,
        )
        h, w = ctx.image.shape[:2]
        t0 = time.perf_counter()
        first, plan = None, None
        consensus = {}
        try:
            if o.candidates > 1:
                kw = {"sampling": SamplingParams(*o.candidate_sampling)} if o.candidate_sampling else {}
                c = self.client.plan_consensus(
                    ctx.instruction, [ctx.image], o.candidates, options=opts, max_subgoals=o.max_subgoals,
                    admissible=in_grammar, **kw,
                )  # fmt: skip
                first = time.perf_counter() - t0  # nothing is executable before every candidate is done
                plan, consensus = c.plan, c.summary()
            else:
                for ev in self.client.plan_stream(
                    ctx.instruction, [ctx.image], max_subgoals=o.max_subgoals, options=opts
                ):
                    if isinstance(ev, RemoteSubgoal) and first is None:
                        first = time.perf_counter() - t0
                    elif isinstance(ev, Plan):
                        plan = ev
        except grpc.RpcError as e:
            return PlanResult([], time.perf_counter() - t0, first, error=f"{e.code().name}: {e.details()}")
        dt = time.perf_counter() - t0
        if plan is None:
            return PlanResult([], dt, first, error="the stream ended without a finished plan")
        sgs = _subgoals(plan, w, h)
        u = plan.usage
        info = {"reason": u.reason, "prompt_tokens": u.prompt_tokens, "server_timings": u.timings}
        tokens = u.generated_tokens
        alternatives = []
        if consensus:
            info["consensus"] = consensus
            tokens = sum(consensus["tokens"])  # every candidate's tokens were generated
            alternatives = [_subgoals(p, w, h) for i, p in enumerate(c.candidates) if i != c.chosen]
        return PlanResult(sgs, dt, first, tokens=tokens, info=info, alternatives=alternatives)

    def close(self) -> None:
        self.client.close()


def in_grammar(plan) -> bool:
    """Every subgoal text of a service plan parses as a skill (`sim_envs.tasks.parse_subgoal`). A consensus keeps
    such a plan over the medoid when the medoid's texts do not parse: sampled texts come out garbled now and then
    (7 of 7,105 in the mini's recorded plans, e.g. "placyan the green block in the tray"), the key-frame executor
    never reads them, and the checked key-frames cannot check a text outside the grammar."""
    return all(parse_subgoal(s.text) is not None for s in plan.subgoals)


class RecordingPlanner:
    """Wraps a planner and keeps every (context, result) it saw, e.g. to draw the first plan afterwards."""

    def __init__(self, planner: Planner) -> None:
        self.planner = planner
        self.calls: list[tuple[PlanContext, PlanResult]] = []

    def plan(self, ctx: PlanContext) -> PlanResult:
        result = self.planner.plan(ctx)
        self.calls.append((ctx, result))
        return result


class ShippedModelPlanner(GrpcPlanner):
    """``mini``: the shipped Emu3.5-mini behind a service this process starts on a free loopback port, asked over
    gRPC exactly like an address, so an evaluation needs no separate ``emu35-robot serve``."""

    def __init__(self, options: GrpcOptions | None = None) -> None:
        import atexit

        from emu35_robot.mini import MINI_BUNDLE, mini_available
        from emu35_robot.server import PlannerServer

        if not mini_available():
            raise FileNotFoundError(f"planner 'mini': the Emu3.5-mini weights are not in {MINI_BUNDLE}")
        self.server = PlannerServer.loopback(MINI_BUNDLE)
        atexit.register(self.server.stop, 0)
        super().__init__(self.server.address, options)
        self.name = "mini"


def file_safe(name: str) -> str:
    """`name` with every character but letters, digits, _ and - replaced by -, for a file or folder name."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)


def plan_file(env_id: str, seed: int, attempt: int) -> str:
    """The file one saved plan lives in (`episode.save_plan` writes it, `SavedPlanner` reads it)."""
    return f"{file_safe(env_id)}_{seed}_a{attempt}.npz"


class SavedPlanner:
    """``saved:DIR``: the plans an earlier run wrote with ``eval --save-plans`` (DIR = its ``plans/PLANNER``), served
    again for the same episodes, so that executors can be compared on the same plans without the planner (a model's
    plan costs seconds to minutes on a CPU; executing it, well under one). A plan that was not saved (another seed,
    a re-plan the earlier run never made), or a re-plan asked from a view other than the one it was made from (the
    executor left the scene elsewhere), is a planner error, which ends the episode."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise FileNotFoundError(f"planner 'saved:{directory}': no such directory (eval --save-plans writes it)")
        self.name = f"saved:{directory}"

    def plan(self, ctx: PlanContext) -> PlanResult:
        path = self.dir / plan_file(ctx.env_id, ctx.seed, ctx.attempt)
        if not path.is_file():
            return PlanResult([], 0.0, None, error=f"no saved plan {path.name} in {self.dir}")
        with np.load(path, allow_pickle=False) as z:
            texts, kfs, has = z["texts"], z["keyframes"], z["has_keyframe"]
            error, seen = str(z["error"]), z["image"]
        # the first plan's scene is the seed's by construction; a re-plan's depends on what the executor did
        if ctx.attempt > 0 and not np.array_equal(seen, ctx.image):
            return PlanResult([], 0.0, None, error=f"{path.name} was planned from another view of the scene")
        h, w = ctx.image.shape[:2]
        subgoals = [
            Subgoal(str(t), cv2.resize(k, (w, h), interpolation=cv2.INTER_AREA) if k.shape[:2] != (h, w) else k)
            if has_kf
            else Subgoal(str(t))
            for t, k, has_kf in zip(texts, kfs, has)
        ]
        return PlanResult(subgoals, 0.0, 0.0 if subgoals else None, error=error)


REFERENCE_PLANNERS = ("oracle", "random")


def make_planner(name: str, image_size: int, grpc_options: GrpcOptions | None = None) -> Planner:
    """``oracle``, ``random``, ``mini`` (the shipped model, served in-process), ``saved:DIR`` (plans saved by an
    earlier run) or a ``host:port`` of ``emu35-robot serve``."""
    if name == "oracle":
        return OraclePlanner(image_size)
    if name == "random":
        return RandomPlanner()
    if name == "mini":
        return ShippedModelPlanner(grpc_options)
    if name.startswith("saved:"):
        return SavedPlanner(name[len("saved:") :])
    if ":" not in name:
        raise ValueError(
            f"planner must be 'oracle', 'random', 'mini', 'saved:DIR' or a gRPC address host:port, got {name!r}"
        )
    return GrpcPlanner(name, grpc_options)
