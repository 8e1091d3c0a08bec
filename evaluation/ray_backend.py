"""Ray backend: the same episode jobs, spread over a Ray cluster (``--ray ADDRESS``) or a local one (``--ray local``).

Workers may sit on other machines without the output directory, so a job writes its video to a local temporary
directory and returns the bytes; the driver writes records and videos, exactly as the process-pool backend does.
Our packages travel with the job as Ray ``py_modules``, so cluster nodes need only the third-party dependencies.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from .episode import EpisodeSpec, EvalConfig

PACKAGES = ("evaluation", "sim_envs", "emu35_robot", "model")


def _job(spec: EpisodeSpec, cfg: EvalConfig) -> tuple[dict, bytes | None]:
    from .runner import _run_safely

    with tempfile.TemporaryDirectory() as tmp:
        record = _run_safely(spec, cfg, tmp)
        video = (Path(tmp) / record["video"]).read_bytes() if record.get("video") else None
    return record, video


def run_ray(
    todo: list[EpisodeSpec], cfg: EvalConfig, out_dir: Path, address: str, workers: int, land: Callable[[dict], None]
) -> None:
    """Run ``todo`` on Ray, calling ``land(record)`` in this process as each episode finishes."""
    import ray

    root = Path(__file__).resolve().parent.parent
    runtime_env = {"py_modules": [str(root / p) for p in PACKAGES], "env_vars": {"MUJOCO_GL": "egl"}}
    started_here = not ray.is_initialized()
    if started_here:
        if address == "local":
            ray.init(num_cpus=max(1, workers), include_dashboard=False, runtime_env=runtime_env, log_to_driver=False)
        else:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    try:
        job = ray.remote(num_cpus=1, max_retries=1)(_job)
        pending = [job.remote(s, cfg) for s in todo]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            record, video = ray.get(done[0])
            if video is not None:
                path = out_dir / record["video"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(video)
            record["backend"] = "ray"
            land(record)
    finally:
        if started_here:
            ray.shutdown()
