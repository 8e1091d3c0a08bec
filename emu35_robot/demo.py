"""`emu35-robot demo`: the shipped Emu3.5-mini plans a simulated episode through the gRPC service, and the key-frame
executor carries the plan out.

Every part is the real one a user runs: the service on a loopback port with the shipped bundle (official layouts),
the Python client streaming a Plan for the camera image, the MuJoCo env, the key-frame executor (which reads only
the predicted images, never the subgoal text) and the evaluation harness's episode loop, video and metrics.
Writes plan_strip.png (the camera view, then each subgoal's key-frame captioned with what the executor did),
videos/*.mp4 (or .gif) and demo.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .contact_sheet import contact_sheet
from .mini import IMAGE_SIZE


def plan_strip(view: np.ndarray, result, record: dict, instruction: str) -> Image.Image:
    """The camera view, then per subgoal of the first plan: the key-frame that ran (the plan's own, or with checked
    key-frames another candidate's, which the caption says), captioned with the outcome."""
    reached = {s["index"]: s for s in record["subgoals"] if s["plan"] == 0}
    images, captions = [Image.fromarray(view)], ["camera view"]
    for i, sg in enumerate(result.subgoals):
        r = reached.get(i)
        k = (r or {}).get("keyframe_check", {}).get("candidate", 0)
        others = result.candidates_at(i)  # as the episode loop offers them to the check
        ran = others[k - 1] if 0 < k <= len(others) else sg
        kf = ran.keyframe if ran.keyframe is not None else np.zeros_like(view)
        images.append(Image.fromarray(kf))
        verdict = "not attempted" if r is None else ("done" if r["success"] else f"failed: {r['message']}")
        swapped = ", another candidate's key-frame" if ran is not sg else ""
        captions.append(f"{sg.text} [{verdict}{swapped}]")
    return contact_sheet(images, captions, title=f"Emu3.5-mini plan: {instruction}", tile=192)


def run_demo(
    out: str | Path,
    checkpoint: str | Path | None = None,
    task: str = "PlaceInZone",
    engine: str = "mujoco",
    seed: int = 10000,
    device: str = "cpu",
    candidates: int = 5,
    check_keyframes: bool | None = None,
) -> dict:
    """One episode planned by the service and run by the key-frame executor; returns demo.json's summary.
    `candidates` > 1: that many plans decoded at once and their consensus kept (1: one greedy plan, the quickest);
    `check_keyframes` (None: whenever there are candidates to check against): the checked key-frames at their
    fullest, as `eval --check-keyframes --replan-on-check --check-scene --recover --replans 3` runs them: before each
    subgoal, a key-frame that does not show what its text says is swapped for a candidate's that
    does (one that also leaves the other blocks in place, if any), and when none does, the robot puts down what it
    holds and plans again instead, up to three times (README, Evaluation: 228 of the card's 240 held-out episodes that
    way against 188 greedy, at about 3.6x the tokens; 338 of 360 on fresh seeds)."""
    if check_keyframes is None:
        check_keyframes = candidates >= 2
    if check_keyframes and candidates < 2:
        raise ValueError("check_keyframes needs candidates >= 2")
    from evaluation.episode import CHECKED, CHECKED_REPLANS, EpisodeSpec, EvalConfig, run_episode
    from evaluation.planners import GrpcOptions, GrpcPlanner, RecordingPlanner

    from .server import PlannerServer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    server = PlannerServer.loopback(checkpoint, device=device)
    try:
        info = server.runtime.model
        address = server.address
        print(f"[1/3] serving {info.name} ({info.parameters:,} parameters, {device}) on {address}", flush=True)
        planner = RecordingPlanner(GrpcPlanner(address, GrpcOptions(timeout_s=300, candidates=candidates)))
        spec = EpisodeSpec(task, engine, "emu35-mini", seed)
        cfg = EvalConfig(
            executor="keyframe", replans=CHECKED_REPLANS if check_keyframes else 1, image_size=IMAGE_SIZE,
            **(CHECKED if check_keyframes else {}),
        )  # fmt: skip
        how = "plan" if candidates < 2 else f"{candidates} plans at once"
        how += ", key-frames checked" if check_keyframes else ""
        print(f"[2/3] {task} on {engine}, seed {seed}: {how} over gRPC, then the key-frame executor", flush=True)
        record = run_episode(spec, cfg, planner, out)
        planner.planner.close()
    finally:
        server.stop(0)
    ctx, first = planner.calls[0]
    strip = plan_strip(ctx.image, first, record, ctx.instruction)
    strip.save(out / "plan_strip.png")
    summary = {
        "model": info.name,
        "checkpoint": info.checkpoint,
        "task": task,
        "engine": engine,
        "seed": seed,
        "candidates": candidates,
        "check_keyframes": check_keyframes,
        "keyframe_swaps": record["keyframe_swaps"],
        "instruction": record["instruction"],
        "success": record["success"],
        "plans": [p["texts"] for p in record["plans"]],
        "subgoals": [{k: s[k] for k in ("text", "success", "message")} for s in record["subgoals"]],
        "placement_agreement": record["placement_agreement"],
        "plan_latency_s": record["plan_latency_s"],
        "tokens_generated": record["tokens_generated"],
        "video": record["video"],
        **({"video_error": record["video_error"]} if record.get("video_error") else {}),
        "plan_strip": "plan_strip.png",
        "wall_s": time.perf_counter() - t0,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    for i, s in enumerate(record["subgoals"]):
        print(f"      {i + 1}. {s['text']!r}: {'done' if s['success'] else 'failed: ' + s['message']}")
    verdict = "SUCCESS" if record["success"] else "did not succeed"
    if record.get("video_error"):
        print(f"      no video: {record['video_error']}", flush=True)
    wrote = [out / "plan_strip.png", *([out / record["video"]] if record["video"] else []), out / "demo.json"]
    print(
        f"[3/3] {verdict}: {record['instruction']!r} in {summary['wall_s']:.0f}s "
        f"(plan {record['plan_latency_s']:.1f}s, {record['tokens_generated']} tokens); "
        f"wrote {', '.join(map(str, wrote))}"
    )
    return summary
