"""Runs many episodes in worker processes, appends each finished one to a JSONL file at once, and resumes.

The JSONL file is the run's only state: a line is written (flush + fsync) as soon as an episode finishes, and a
re-run skips every key already there, so a killed run loses at most the episodes that were in flight.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from contextlib import contextmanager
from pathlib import Path

from emu35_robot.workers import worker_pool

from .episode import EpisodeSpec, EvalConfig, run_episode
from .planners import GrpcPlanner, Planner, make_planner

EPISODES_FILE = "episodes.jsonl"
CONFIG_FILE = "config.json"

# ---- JSONL ---------------------------------------------------------------------------------------------------------


def read_records(path: str | Path) -> list[dict]:
    """Complete records in file order; a torn last line (a write cut by a kill) is ignored."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class RecordWriter:
    """Appends one JSON line per episode and makes it durable before returning."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        self._f = open(self.path, "a")  # noqa: SIM115 - closed in close()

    def _drop_torn_tail(self) -> None:
        """A kill mid-write leaves a line without its newline; cut it so the next record starts on a fresh line."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, record: dict) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


# ---- worker side ---------------------------------------------------------------------------------------------------

# per worker process: one oracle cache / one gRPC channel per planner, settings and shared server (a second run in
# the same process, e.g. the CLI called again from Python, may ask the same address with other options)
_PLANNERS: dict[tuple[str, int, str, str | None], Planner] = {}


def _planner(name: str, cfg: EvalConfig, served: dict[str, str] | None = None) -> Planner:
    address = (served or {}).get(name)
    key = (name, cfg.image_size, repr(cfg.grpc), address)
    if key not in _PLANNERS:
        if address:  # the driver's shared server (shared_mini), asked like any address but recorded by its name
            _PLANNERS[key] = GrpcPlanner(address, cfg.grpc)
            _PLANNERS[key].name = name
        else:
            _PLANNERS[key] = make_planner(name, cfg.image_size, cfg.grpc)
    return _PLANNERS[key]


def _run_safely(spec: EpisodeSpec, cfg: EvalConfig, out_dir: str, served: dict[str, str] | None = None) -> dict:
    """Run one episode in a worker; an exception becomes a failed record with its traceback, not a dead run.
    `served`: planner name -> address of a server the driver started for it (shared_mini)."""
    try:
        record = run_episode(spec, cfg, _planner(spec.planner, cfg, served), out_dir)
    except Exception as e:  # a physics or planner crash must not take the other episodes with it
        record = {
            "key": spec.key, "task": spec.task, "engine": spec.engine, "planner": spec.planner, "seed": spec.seed,
            "executor": cfg.executor, "success": False, "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(limit=8),
        }  # fmt: skip
    record["worker_pid"] = os.getpid()
    return record


# ---- driver side ---------------------------------------------------------------------------------------------------


def episode_specs(tasks: Iterable[str], engines: Iterable[str], planners: Iterable[str], seeds: Iterable[int]):
    return [EpisodeSpec(t, e, p, s) for p in planners for t in tasks for e in engines for s in seeds]


def check_config(out_dir: Path, cfg: EvalConfig) -> None:
    """One output directory is one configuration: resuming with different settings would mix incomparable
    episodes under the same keys, so it is refused."""
    path = out_dir / CONFIG_FILE
    now = cfg.to_json()
    if path.exists():
        default, saved = EvalConfig().to_json(), json.loads(path.read_text())
        # a setting added since, at the top or inside a group of them (grpc): its default
        before = {k: {**v, **saved.get(k, {})} if isinstance(v, dict) else saved.get(k, v) for k, v in default.items()}
        unscored = ("video", "save_plans")  # what a run writes besides its records, not what they measure
        diff = {k: (before.get(k), v) for k, v in now.items() if before.get(k) != v and k not in unscored}
        if diff:
            raise ValueError(f"{out_dir} holds a run with other settings {diff}; use another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(now, indent=2))


@contextmanager
def shared_mini(cfg: EvalConfig, specs: list[EpisodeSpec], workers: int) -> Iterator[dict[str, str]]:
    """{"mini": address} of one server on `cfg.mini_device` that every worker asks, for as long as the run lasts; {}
    when no device is set (each worker serves its own on the CPU: CPU decoding scales with processes) or the mini is
    not asked. Why one server on a GPU: the mini is far too small to keep a GPU busy alone, so a server per worker
    would leave it idle between launches; one server batches every worker's requests (and every consensus
    candidate) into one decode step. Its batch holds them all: workers x candidates streams. On the CPU it saves
    memory: one copy of the model instead of one per worker."""
    if cfg.mini_device is None or not any(s.planner == "mini" for s in specs):
        yield {}
        return
    from emu35_robot.limits import Limits
    from emu35_robot.mini import MINI_BUNDLE, mini_available
    from emu35_robot.server import PlannerServer

    if not mini_available():
        raise FileNotFoundError(f"planner 'mini': the Emu3.5-mini weights are not in {MINI_BUNDLE}")
    streams = max(1, workers) * max(1, cfg.grpc.candidates)
    limits = Limits(max_batch=max(8, streams), max_queue=max(8, streams))
    # plain torch ops: the mini's step is bound by launches, not by the kernels, and each new batch shape would
    # otherwise compile its own
    server = PlannerServer.loopback(MINI_BUNDLE, limits=limits, device=cfg.mini_device, dtype="float32", kernels=False)
    try:
        yield {"mini": server.address}
    finally:
        server.stop(0)


def pending(specs: list[EpisodeSpec], out_dir: Path) -> list[EpisodeSpec]:
    done = {r["key"] for r in read_records(out_dir / EPISODES_FILE)}
    return [s for s in specs if s.key not in done]


def run(
    specs: list[EpisodeSpec],
    cfg: EvalConfig,
    out_dir: str | Path,
    workers: int = 1,
    ray_address: str | None = None,
    progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run the episodes not yet in ``out_dir/episodes.jsonl``; returns every record of the file afterwards.

    ``ray_address`` ("local" or a cluster address) runs the episodes on Ray; else ``workers <= 1`` runs them in this
    process, and more use a spawn-context process pool (spawn: MuJoCo's GL context and gRPC channels do not survive
    fork).
    """
    from tqdm import tqdm

    if ray_address and cfg.mini_device is not None:
        raise ValueError(
            "mini_device: the shared server listens on this machine's loopback, which Ray workers elsewhere cannot "
            "reach; serve the model (`emu35-robot serve --device cuda`) and pass its address as the planner"
        )
    out = Path(out_dir)
    check_config(out, cfg)
    todo = pending(specs, out)
    writer = RecordWriter(out / EPISODES_FILE)
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc="episodes", disable=not progress, unit="ep")

    def land(record: dict) -> None:
        writer.append(record)
        bar.update(1)
        bar.set_postfix_str(f"{record['key']} {'ok' if record.get('success') else 'fail'}")
        if on_record:
            on_record(record)

    try:
        if ray_address:
            from .ray_backend import run_ray

            run_ray(todo, cfg, out, ray_address, workers, land)
        elif workers <= 1:
            with shared_mini(cfg, todo, workers) as served:
                for s in todo:
                    land(_run_safely(s, cfg, str(out), served))
        else:
            with shared_mini(cfg, todo, workers) as served, worker_pool(workers) as pool:
                futures = {pool.submit(_run_safely, s, cfg, str(out), served) for s in todo}
                while futures:
                    finished, futures = wait(futures, return_when=FIRST_COMPLETED)
                    for f in finished:
                        land(f.result())
    finally:
        writer.close()
        bar.close()
    return read_records(out / EPISODES_FILE)
