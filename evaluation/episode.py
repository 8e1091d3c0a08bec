"""One closed-loop episode: reset(seed) -> plan from the camera -> execute subgoal by subgoal -> re-plan on failure.
With a horizon K, only a plan's first K subgoals run before planning again from the new view (receding horizon).

Returns a JSON-ready record holding everything the metrics and the report are computed from, so aggregate numbers
can always be re-derived from (and checked against) the records themselves.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from sim_envs import env_id
from sim_envs.executors import Executor, KeyframeExecutor, LanguageExecutor, Subgoal, put_down_held
from sim_envs.plan_check import check_plan
from sim_envs.tasks import SkillCall, is_held

from .metrics import block_agreement, follows_text, psnr, ssim
from .planners import GrpcOptions, PlanContext, Planner, PlanResult, file_safe, plan_file

PLANS_DIR = "plans"


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode of a run; (task, engine, planner, seed) is its identity in the JSONL file."""

    task: str
    engine: str
    planner: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.task}|{self.engine}|{self.planner}|{self.seed}"


# the checked planner at its fullest (README, Evaluation: 228 of the card's 240 episodes, 338 of 360 fresh ones): the
# check with every refinement and the put-down (EvalConfig fields), this many candidates and re-plans; what
# `eval --checked` and `emu35-robot demo` run
CHECKED = {"check_keyframes": True, "check_scene": True, "replan_on_check": True, "recover": True}
CHECKED_CANDIDATES, CHECKED_REPLANS = 5, 3


@dataclass
class EvalConfig:
    """Settings shared by every episode of a run (written to DIR/config.json; a resume must match them)."""

    executor: str = "keyframe"  # keyframe | language
    replans: int = 1  # re-plans allowed per episode after a failed subgoal or an exhausted plan
    # > 0: run only the first `horizon` subgoals of each plan, then plan again from the camera (not counted as a
    # re-plan). Why: a plan's later key-frames are drawn from its own earlier ones and inherit their errors; planned
    # again, every key-frame is drawn from a real view. At most 2 x (canonical subgoals) such continuations.
    horizon: int = 0
    # before a re-plan, put down a block left in the gripper (sim_envs.executors.put_down_held), so every plan starts
    # with an empty gripper. Why: the mini's re-plans from a wrong block in hand failed (README, Evaluation)
    recover: bool = False
    image_size: int = 96
    max_steps_per_subgoal: int = 120
    placement_tol_m: float = 0.03
    video: bool = True
    video_every: int = 3  # record a video frame every k env steps
    save_plans: bool = False  # every plan's texts and key-frames to DIR/plans/ (replayed by planner saved:DIR/...)
    # key-frame executor with consensus candidates: before a subgoal runs, read its key-frame as the executor would
    # (KeyframeExecutor.read_keyframe, on the real current scene); when that is not what the text says
    # (metrics.follows_text), run the first other candidate's key-frame for the same text that is. Why: in the
    # card's run every failed subgoal's key-frame did not follow its text, and every one that did succeeded
    check_keyframes: bool = False
    # with check_keyframes: of the candidates that pass, run one whose key-frame also leaves every block the subgoal
    # does not name where the camera sees it now (keeps_scene), when there is one
    check_scene: bool = False
    # with check_keyframes: when no candidate's key-frame passes, run none of them and plan again from the camera (a
    # re-plan, counted in `replans`). Why: a key-frame the check refuses does the wrong thing (the wrong block picked,
    # a placement outside the zone), and the re-plan then starts from that mess; in the first GPU run of the check
    # (2026-12-01) nearly every failed episode had run such a key-frame first
    replan_on_check: bool = False
    # where planner `mini` runs: None, a CPU server in every worker process; a device ("cuda", "cuda:1", "cpu"), one
    # server there in the driver, in float32, that every worker asks, so all their requests decode in one batch
    # (runner.shared_mini). Part of the configuration: another device or batch sums in another order, which can flip
    # a greedy token now and then
    mini_device: str | None = None
    grpc: GrpcOptions = field(default_factory=GrpcOptions)

    def __post_init__(self) -> None:
        for name in ("check_scene", "replan_on_check"):
            if getattr(self, name) and not self.check_keyframes:
                raise ValueError(f"EvalConfig.{name} refines check_keyframes, which is off")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["grpc"] = {**d["grpc"], "token": None, "logit_bias": {str(k): v for k, v in self.grpc.logit_bias.items()}}
        return json.loads(json.dumps(d))  # as config.json reads back (tuples become lists), so a resume compares equal


def make_executor(name: str, max_steps: int) -> Executor:
    if name == "keyframe":
        return KeyframeExecutor(max_steps=max_steps)
    if name == "language":
        return LanguageExecutor(max_steps=max_steps)
    raise ValueError(f"executor must be 'keyframe' or 'language', got {name!r}")


class FrameCapture(gym.Wrapper):
    """Grabs the front camera every ``every`` steps the executors take, tagged with the (plan, subgoal) running."""

    def __init__(self, env: gym.Env, every: int) -> None:
        super().__init__(env)
        self.every, self.n, self.tag = every, 0, (0, 0)
        self.frames: list[tuple[np.ndarray, tuple[int, int]]] = []

    def grab(self) -> None:
        if self.every:
            self.frames.append((self.env.unwrapped.render_camera("front"), self.tag))

    def step(self, action):
        out = self.env.step(action)
        self.n += 1
        if self.every and self.n % self.every == 0:
            self.grab()
        return out


def save_plan(directory: Path, ctx: PlanContext, pr: PlanResult) -> Path:
    """One plan as ``{env}_{seed}_a{attempt}.npz`` (texts, key-frames, which subgoals have one), written whole or not
    at all, so that an executor can be re-run on it later without the planner (`SavedPlanner`)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / plan_file(ctx.env_id, ctx.seed, ctx.attempt)
    h, w = ctx.image.shape[:2]
    kfs = [s.keyframe if s.keyframe is not None else np.zeros((h, w, 3), np.uint8) for s in pr.subgoals]
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        texts=np.array([s.text for s in pr.subgoals], dtype=str),
        keyframes=np.stack(kfs) if kfs else np.zeros((0, h, w, 3), np.uint8),
        has_keyframe=np.array([s.keyframe is not None for s in pr.subgoals], dtype=bool),
        instruction=np.array(ctx.instruction),
        image=ctx.image,  # what the plan was made from: a re-plan is served again only from the same view
        error=np.array(pr.error),
    )
    os.replace(tmp, path)
    return path


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def checked_keyframe(
    executor: KeyframeExecutor,
    env,
    scene,
    sg: Subgoal,
    others: list[Subgoal],
    check_scene: bool = False,
    tol: float = 0.03,
) -> tuple[Subgoal, dict[str, Any]]:
    """The subgoal to run: `sg`, unless the executor's reading of its key-frame from the current scene is not what its
    text says (or is a table placement onto a block standing there: `lands_free`) and another candidate's key-frame
    for the same text is (EvalConfig.check_keyframes). With `check_scene`, a key-frame that passes but moves or drops
    a block its text does not name (`keeps_scene`) gives way to the first candidate's that passes both, if any.
    Returns it with a record: whether the kept key-frame followed, which candidate's ran (0: the kept plan's; k: the
    k-th other one), how many were read and what each read as (`reads`: the skill call, or why none), `occupied`
    when the kept one followed its text but onto another block, and with `check_scene` whether the one that runs
    keeps the scene."""

    views: dict[tuple[int, int], tuple] = {}  # the camera now, rendered once: the scene stands still while we read
    reads: list[str] = []  # what each key-frame read as, in the order read: why a subgoal was refused

    def passes(s: Subgoal) -> tuple[bool | None, bool, bool]:  # (follows_text, and lands_free, and keeps_scene)
        skill, how = executor.read_keyframe(env, s)
        reads.append(how if skill is None else " ".join(str(x) for x in (skill.skill, skill.obj, skill.target) if x))
        f = follows_text(sg.text, skill, scene)
        ok = bool(f) and lands_free(env, skill)
        return f, ok, ok and (not check_scene or keeps_scene(env, scene, s.keyframe, skill, tol, views))

    text_ok, ok, best = passes(sg)
    rec: dict[str, Any] = {"follows": ok if text_ok else text_ok, "candidate": 0, "read": 1, "reads": reads}
    if text_ok and not ok:
        rec["occupied"] = True
    if check_scene:
        rec["keeps_scene"] = best
    if text_ok is None or best:
        return sg, rec
    fallback = (0, sg) if ok else None  # one that passes all but the scene test
    for k, other in enumerate(others, start=1):
        if other.text != sg.text or other.keyframe is None:
            continue
        rec["read"] += 1
        _, other_ok, other_best = passes(other)
        if other_best:
            rec["candidate"] = k
            if check_scene:
                rec["keeps_scene"] = True
            return other, rec
        if other_ok and fallback is None:
            fallback = (k, other)
    if fallback is None:
        return sg, rec
    rec["candidate"] = fallback[0]
    return fallback[1], rec


def keeps_scene(
    env,
    scene,
    keyframe: np.ndarray | None,
    skill: SkillCall | None,
    tol: float = 0.03,
    views: dict[tuple[int, int], tuple] | None = None,
) -> bool:
    """Does the key-frame leave every block but the one its subgoal moves where the camera sees it now (each found
    within `tol` metres in both images, or missing from both: `metrics.block_agreement`)? A key-frame is a prediction
    of the whole scene after the subgoal; the executor reads only the moved block from it, so a key-frame that also
    shifts or drops another block runs the same but misstates the scene (placement agreement), and one that drops a
    placed block is the kind that sets the held block down on it (`lands_free`). `views`: the current (image, camera
    model) by size, filled on first use, so that reading several candidates renders the camera once."""
    if keyframe is None or skill is None:
        return False
    h, w = keyframe.shape[:2]
    views = {} if views is None else views
    if (w, h) not in views:
        u = env.unwrapped
        views[w, h] = (u.render_camera("front", w, h), u.camera_model("front", w, h))
    now, cam = views[w, h]
    rest = [b.colour for b in scene.blocks if b.name != skill.obj]
    return all(block_agreement(keyframe, now, cam, rest, tol).values())


# a table placement whose point is nearer than this to a block standing there lands on it (blocks are 4 cm wide)
FREE_DISTANCE = 0.03


def lands_free(env, skill: SkillCall | None) -> bool:
    """False for a table placement (`place_at`) at a point where another block stands now. A key-frame that paints
    the held block where an earlier one was placed (the mini's commonest ClearTable failure under the check) has
    dropped that block from the scene: the arm would set the held one down on top of it, not on the table."""
    xy = None if skill is None else skill.point
    if xy is None:
        return True
    ws = env.unwrapped.world_state()
    return all(np.linalg.norm(p[:2] - xy) >= FREE_DISTANCE for name, p in ws.positions.items() if name != skill.obj)


def _plan_record(attempt: int, pr: PlanResult) -> dict[str, Any]:
    return {
        "attempt": attempt,
        "texts": [s.text for s in pr.subgoals],
        "keyframes": sum(s.keyframe is not None for s in pr.subgoals),
        "latency_s": pr.latency_s,
        "first_subgoal_s": pr.first_subgoal_s,
        "tokens": pr.tokens,
        "error": pr.error,
        "info": pr.info,
    }


def run_episode(spec: EpisodeSpec, cfg: EvalConfig, planner: Planner, out_dir: str | Path | None = None) -> dict:
    """Run one episode and return its record; writes its video under ``out_dir/videos`` when ``cfg.video``."""
    t_start = time.perf_counter()
    env = gym.make(env_id(spec.task, spec.engine), image_size=cfg.image_size, image_obs=False)
    cap = FrameCapture(env, cfg.video_every if cfg.video and out_dir else 0)
    try:
        _, info = cap.reset(seed=spec.seed)
        u = env.unwrapped
        scene = u.task.scene
        colours = [b.colour for b in scene.blocks]
        executor = make_executor(cfg.executor, cfg.max_steps_per_subgoal)
        plans: list[dict] = []
        plan_frames: list[list[Subgoal]] = []
        subgoals: list[dict] = []
        cap.grab()
        done = False
        failures = 0
        after = "start"  # why the next plan is made: start | horizon (continuing) | failure (a re-plan)
        while True:
            attempt = len(plans)
            ctx = PlanContext(
                info["instruction"], u.render_camera("front"), env_id(spec.task, spec.engine), spec.seed,
                attempt, u.subgoal_index, scene.block_names(), scene.zone_names(),
            )  # fmt: skip
            pr = planner.plan(ctx)
            if cfg.save_plans and out_dir is not None:
                save_plan(Path(out_dir) / PLANS_DIR / file_safe(spec.planner), ctx, pr)
            plans.append({**_plan_record(attempt, pr), "after": after})
            plan_frames.append(pr.subgoals)
            todo = pr.subgoals[: cfg.horizon] if cfg.horizon else pr.subgoals
            failed = False
            for i, sg in enumerate(todo):
                cap.tag = (attempt, i)
                check = None
                if cfg.check_keyframes and isinstance(executor, KeyframeExecutor):
                    sg, check = checked_keyframe(
                        executor, cap, scene, sg, pr.candidates_at(i), cfg.check_scene, cfg.placement_tol_m
                    )
                    if cfg.replan_on_check and check["follows"] is False and check["candidate"] == 0:
                        subgoals.append({
                            "plan": attempt, "index": i, "text": sg.text, "success": False, "grounded": None,
                            "steps": 0, "skill": None, "keyframe_check": check, "refused": True,
                            "message": "no candidate's key-frame shows what the text says: planning again",
                        })  # fmt: skip
                        failed = True
                        break
                r = executor.execute(cap, sg)
                rec: dict[str, Any] = {
                    "plan": attempt, "index": i, "text": sg.text, "success": r.success, "grounded": r.grounded,
                    "steps": r.steps, "message": r.message,
                    "skill": None if r.skill is None else [r.skill.skill, r.skill.obj, r.skill.target],
                }  # fmt: skip
                if check is not None:
                    rec["keyframe_check"] = check
                if sg.keyframe is not None:
                    h, w = sg.keyframe.shape[:2]
                    achieved = r.frame if r.frame is not None else u.render_camera("front", w, h)
                    cam, ws = u.camera_model("front", w, h), u.world_state()
                    ok = block_agreement(sg.keyframe, achieved, cam, colours, cfg.placement_tol_m)
                    held = {b.colour for b in scene.blocks if is_held(ws, b.name)}
                    resting = [a for c, a in ok.items() if c not in held]
                    # the block this subgoal moved, where it came to rest: does the key-frame put it there (None
                    # after a pick: a block in the air is not placed)
                    moved = next((b.colour for b in scene.blocks if r.skill and b.name == r.skill.obj), None)
                    if cfg.executor == "keyframe":
                        rec["follows_text"] = follows_text(sg.text, r.skill, scene)
                    rec.update(
                        psnr=_finite(psnr(achieved, sg.keyframe)),
                        ssim=ssim(achieved, sg.keyframe),
                        placement_agree=sum(ok.values()),
                        placement_total=len(ok),
                        placement_rest_agree=sum(resting),
                        placement_rest_total=len(resting),
                        placement_moved=ok[moved] if moved in ok and moved not in held else None,
                    )
                subgoals.append(rec)
                done = bool(u.task.success(u.world_state()))
                failed = not r.success
                if done or failed:
                    break
            if done:
                break
            if cfg.horizon and not failed and len(todo) == cfg.horizon:  # cut at the horizon, all of it done
                if len(plans) - failures > 2 * len(info["subgoals"]):
                    break
                after = "horizon"
                continue
            failures += 1  # a failed subgoal, an exhausted plan or a planner error
            if failures > cfg.replans:
                break
            after = "failure"
            if cfg.recover:
                cap.tag = (attempt, -1)
                plans[-1]["put_down"], plans[-1]["put_down_steps"] = put_down_held(cap, cfg.max_steps_per_subgoal)
        cap.tag = (len(plans) - 1, -1)
        cap.grab()
        record = _summarise(spec, cfg, info, u, plans, subgoals, done)
        record["wall_s"] = time.perf_counter() - t_start
        record["video"], record["video_format"] = None, None
        if cap.every and out_dir is not None:
            from .video import write_episode_video

            path = Path(out_dir) / "videos" / file_safe(spec.key.replace("|", "_"))
            try:  # the episode's result stands whether or not its video could be written
                written = write_episode_video(path, cap.frames, plan_frames, spec, info["instruction"])
                record["video"], record["video_format"] = os.path.relpath(written, out_dir), written.suffix[1:]
            except Exception as e:  # e.g. the ffmpeg subprocess died
                record["video_error"] = f"{type(e).__name__}: {e}"[:500]
        return record
    finally:
        env.close()


def _ratio(rows: list[dict], num: str, den: str) -> float | None:
    d = sum(r.get(den, 0) for r in rows)
    return sum(r.get(num, 0) for r in rows) / d if d else None


def _summarise(spec, cfg, info, u, plans, subgoals, done) -> dict[str, Any]:
    fid = [s for s in subgoals if "ssim" in s]
    first = plans[0]
    # what the first plan says, apart from where its key-frames put things: do its texts reach the goal on a
    # symbolic world (any valid order counts; sim_envs.plan_check)
    text_check = check_plan(first["texts"], list(info["subgoals"]))
    cut = cfg.horizon > 0  # a first plan cut at the horizon is not meant to reach the goal
    return {
        "key": spec.key,
        "task": spec.task,
        "engine": spec.engine,
        "planner": spec.planner,
        "seed": spec.seed,
        "executor": cfg.executor,
        "instruction": info["instruction"],
        "canonical_subgoals": list(info["subgoals"]),
        "success": done,
        "progress": int(u.subgoal_index),  # canonical subgoals reached, in order
        "subgoals_completed": sum(bool(s["success"]) for s in subgoals),
        "subgoals_attempted": len(subgoals),
        "replans": sum(p["after"] == "failure" for p in plans),
        "plans_made": len(plans),
        "first_plan_reaches_goal": None if cut else text_check.reaches_goal,
        "first_plan_check": "cut at the horizon" if cut else text_check.reason,
        "time_to_first_subgoal_s": first["first_subgoal_s"],
        "plan_latency_s": first["latency_s"],
        "plan_latency_total_s": sum(p["latency_s"] for p in plans),
        "tokens_generated": sum(p["tokens"] for p in plans),
        "psnr_mean": _mean([s["psnr"] for s in fid]),
        "ssim_mean": _mean([s["ssim"] for s in fid]),
        "placement_agreement": _ratio(fid, "placement_agree", "placement_total"),
        "placement_agreement_resting": _ratio(fid, "placement_rest_agree", "placement_rest_total"),
        # the measure read per subgoal: of the subgoals that set a block down, those whose key-frame put it
        # where it came to rest
        "placement_moved_agreement": _mean([s.get("placement_moved") for s in fid]),
        "keyframe_follows_text": _mean([s.get("follows_text") for s in subgoals]),
        # check_keyframes: subgoals that ran another candidate's key-frame than the kept plan's
        "keyframe_swaps": sum(s.get("keyframe_check", {}).get("candidate", 0) > 0 for s in subgoals),
        "steps": int(sum(s["steps"] for s in subgoals)),
        "planner_errors": [p["error"] for p in plans if p["error"]],
        "plans": plans,
        "subgoals": subgoals,
        "error": None,
    }


def _mean(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return float(np.mean(v)) if v else None
