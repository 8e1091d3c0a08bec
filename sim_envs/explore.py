"""A camera that walks around the table on commands, and a one-line narration of what each view shows.

The exploration task's ground truth: `ExploreView` is a point on a sphere around the workspace (see
`scene.orbit_camera`), `COMMANDS` move it by fixed steps within limits, and `narrate` names the direction and the
blocks and zones whose centres fall inside the image. Rendering is the env's `render_camera(view.camera())`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .scene import CameraSpec, camera_model, orbit_camera

AZIMUTHS = (-90.0, 90.0)  # degrees; the robot's side of the table stays out of reach
ELEVATIONS = (20.0, 65.0)
DISTANCES = (0.55, 1.05)
START = dict(azimuth=0.0, elevation=40.0, distance=0.8)


@dataclass(frozen=True)
class ExploreView:
    azimuth: float = START["azimuth"]
    elevation: float = START["elevation"]
    distance: float = START["distance"]

    def camera(self) -> CameraSpec:
        return orbit_camera(self.azimuth, self.elevation, self.distance)


# command -> (azimuth step, elevation step, distance factor)
COMMANDS: dict[str, tuple[float, float, float]] = {
    "orbit right": (30.0, 0.0, 1.0),
    "orbit left": (-30.0, 0.0, 1.0),
    "look from higher": (0.0, 15.0, 1.0),
    "look from lower": (0.0, -15.0, 1.0),
    "move closer": (0.0, 0.0, 0.8),
    "move back": (0.0, 0.0, 1.25),
}


def apply_command(view: ExploreView, command: str) -> ExploreView | None:
    """The view after ``command``, or None when it would leave the allowed range (the camera stays put)."""
    if command not in COMMANDS:
        raise ValueError(f"unknown explore command {command!r}; known: {sorted(COMMANDS)}")
    da, de, f = COMMANDS[command]
    new = replace(view, azimuth=view.azimuth + da, elevation=view.elevation + de, distance=view.distance * f)
    ok = (
        AZIMUTHS[0] - 1e-6 <= new.azimuth <= AZIMUTHS[1] + 1e-6
        and ELEVATIONS[0] - 1e-6 <= new.elevation <= ELEVATIONS[1] + 1e-6
        and DISTANCES[0] - 1e-6 <= new.distance <= DISTANCES[1] + 1e-6
    )
    return new if ok else None


def random_walk(rng: np.random.Generator, turns: int) -> tuple[ExploreView, list[tuple[str, ExploreView]]]:
    """A start view near the front camera and ``turns`` valid commands from it."""
    view = ExploreView(
        azimuth=float(rng.choice([-30.0, 0.0, 30.0])),
        elevation=float(rng.choice([25.0, 40.0, 55.0])),
        distance=float(rng.choice([0.64, 0.8, 1.0])),
    )
    start, steps = view, []
    names = list(COMMANDS)
    for _ in range(turns):
        options = [(c, v) for c in names if (v := apply_command(view, c)) is not None]
        command, view = options[int(rng.integers(len(options)))]
        steps.append((command, view))
    return start, steps


def _side(azimuth: float) -> str:
    a = round(azimuth / 30.0) * 30
    return {0: "the front", 30: "the front right", -30: "the front left", 60: "the right", -60: "the left"}.get(
        a, "the right side" if a > 0 else "the left side"
    )


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def visible_objects(env, view: ExploreView, size: int = 128, margin: float = 2.0) -> tuple[list[str], list[str]]:
    """(block colours, zone colours) whose centres project inside the image, left to right."""
    u = env.unwrapped
    cam = camera_model(view.camera(), size, size)
    R, t = cam.cam_to_world[:3, :3], cam.cam_to_world[:3, 3]

    def u_coord(p) -> float | None:
        pc = R.T @ (np.asarray(p, dtype=float) - t)
        if pc[2] <= 0:
            return None
        uv = cam.K @ (pc / pc[2])
        inside = margin <= uv[0] <= size - margin and margin <= uv[1] <= size - margin
        return float(uv[0]) if inside else None

    ws = u.world_state()
    blocks = [(x, n.split()[0]) for n, p in ws.positions.items() if (x := u_coord(p)) is not None]
    zones = [(x, z.colour) for z in u.task.scene.zones if (x := u_coord((*z.xy, 0.0))) is not None]
    return [c for _, c in sorted(blocks)], [c for _, c in sorted(zones)]


def narrate(env, view: ExploreView, size: int = 128) -> str:
    """One line: where the camera is and what it sees, e.g. 'From the front left, up high: the red and green
    blocks and the tray.'"""
    where = [f"From {_side(view.azimuth)}"]
    if view.elevation >= 55:
        where.append("up high")
    elif view.elevation <= 25:
        where.append("low down")
    if view.distance <= 0.65:
        where.append("close up")
    elif view.distance >= 1.0:
        where.append("from afar")
    blocks, zones = visible_objects(env, view, size)
    seen = []
    if blocks:
        seen.append(f"the {_join(blocks)} block{'s' if len(blocks) > 1 else ''}")
    for z in zones:
        seen.append("the tray" if z == "tray" else f"the {z} zone")
    return ", ".join(where) + ": " + (_join(seen) if seen else "an empty stretch of table") + "."
