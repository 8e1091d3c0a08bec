"""Task families: seeded scene sampling, instruction templates, canonical subgoals and success predicates.

Everything here works on a :class:`WorldState` snapshot, so tasks are engine-agnostic. Subgoal texts follow a
small grammar (:func:`parse_subgoal`) that the language executor and the per-subgoal predicates share.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import numpy as np

from .scene import (
    BLOCK_HALF,
    MAX_BLOCKS,
    PALETTE,
    TRAY_HALF,
    TRAY_SLOT_DY,
    ZONE_HALF,
    BlockSpec,
    SceneSpec,
    ZoneSpec,
    sample_xy,
)

LIFT_MIN = BLOCK_HALF + 0.03  # a held block's centre is at least 3 cm above its resting height
ON_XY_TOL = 0.024
Z_TOL = 0.01


@dataclass
class WorldState:
    """What predicates need: block centres and yaws, end-effector pose and gripper state."""

    positions: dict[str, np.ndarray]
    yaws: dict[str, float]
    ee_pos: np.ndarray
    ee_yaw: float
    gripper_opening: float  # distance between the fingers, metres
    gripper_closed: bool  # the commanded state
    scene: SceneSpec


# --------------------------------------------------------------------------------------------- predicates
def is_held(ws: WorldState, obj: str) -> bool:
    p = ws.positions[obj]
    return bool(ws.gripper_closed and p[2] > LIFT_MIN and np.linalg.norm(p - ws.ee_pos) < 0.05)


def released(ws: WorldState) -> bool:
    """Gripper open and clear of every block below it (so a key-frame shows the block, not the fingers)."""
    if ws.gripper_closed:
        return False
    for p in ws.positions.values():
        if np.linalg.norm(p[:2] - ws.ee_pos[:2]) < 0.06 and ws.ee_pos[2] < p[2] + 0.05:
            return False
    return True


def on_table(ws: WorldState, obj: str) -> bool:
    return bool(abs(ws.positions[obj][2] - BLOCK_HALF) < Z_TOL)


def in_zone(ws: WorldState, obj: str, zone: str) -> bool:
    return on_table(ws, obj) and ws.scene.zone(zone).contains(ws.positions[obj])


def on_block(ws: WorldState, obj: str, base: str) -> bool:
    p, q = ws.positions[obj], ws.positions[base]
    return bool(np.linalg.norm(p[:2] - q[:2]) < ON_XY_TOL and abs(p[2] - q[2] - 2 * BLOCK_HALF) < Z_TOL)


# ------------------------------------------------------------------------------------------ subgoal grammar
@dataclass(frozen=True)
class SkillCall:
    """A grounded subgoal: ``skill`` in {"pick", "place_zone", "place_on"}, the object and the target name; or, as
    the key-frame executor reads a table placement, "place_at" with the target point "x,y" (metres)."""

    skill: str
    obj: str
    target: str | None = None

    @property
    def point(self) -> np.ndarray | None:
        """The table point [x, y] of a "place_at" call; None for the others."""
        return np.array([float(v) for v in self.target.split(",")]) if self.skill == "place_at" else None


_OBJ = r"(?:the\s+)?(\w+)\s+(?:block|cube|one)"
_PICK = re.compile(rf"^(?:pick\s+up|pick|grab|grasp|lift|take)\s+{_OBJ}$")
_PLACE_ZONE = re.compile(
    rf"^(?:place|put|move|drop|set)\s+{_OBJ}\s+(?:in|into|inside|on|onto|to)\s+the\s+(?:(\w+)\s+(?:zone|area|square)|(tray))$"
)
_PLACE_ON = re.compile(rf"^(?:place|put|stack|set|move)\s+{_OBJ}\s+(?:on\s+top\s+of|onto|on)\s+{_OBJ}$")


def parse_subgoal(text: str) -> SkillCall | None:
    """Ground a subgoal text to a skill call, or None when the grammar does not cover it."""
    t = " ".join(text.lower().replace(",", " ").rstrip(".!").split())
    if m := _PICK.match(t):
        return SkillCall("pick", f"{m.group(1)} block")
    if m := _PLACE_ZONE.match(t):
        return SkillCall("place_zone", f"{m.group(1)} block", "tray" if m.group(3) else f"{m.group(2)} zone")
    if m := _PLACE_ON.match(t):
        return SkillCall("place_on", f"{m.group(1)} block", f"{m.group(2)} block")
    return None


def check_call(ws: WorldState, call: SkillCall) -> bool:
    """The predicate of a grounded subgoal on a world state."""
    if call.skill == "pick":
        return is_held(ws, call.obj)
    if call.skill == "place_zone":
        return in_zone(ws, call.obj, call.target) and released(ws)
    if call.skill == "place_on":
        return on_block(ws, call.obj, call.target) and released(ws)
    raise ValueError(call.skill)


def pick_text(obj: str) -> str:
    return f"pick up the {obj}"


def place_text(obj: str, target: str) -> str:
    if target.endswith("block"):
        return f"place the {obj} on the {target}"
    return f"place the {obj} in the {target}"


# ---------------------------------------------------------------------------------------------- families
class NoSuchGoal(ValueError):
    """reset(options={"retarget": k}) on a scene with fewer than k other goals (or a family without any)."""


@dataclass(frozen=True)
class TaskInstance:
    family: str
    instruction: str
    subgoals: tuple[str, ...]
    scene: SceneSpec
    goal: tuple[SkillCall, ...]  # final placement conditions (all must hold, plus a released gripper)

    def success(self, ws: WorldState) -> bool:
        return released(ws) and all(check_call(ws, c) for c in self.goal)


def _pick_place(pairs: list[tuple[str, str]]) -> tuple[str, ...]:
    out: list[str] = []
    for obj, target in pairs:
        out += [pick_text(obj), place_text(obj, target)]
    return tuple(out)


def _goal(pairs: list[tuple[str, str]]) -> tuple[SkillCall, ...]:
    return tuple(SkillCall("place_on" if t.endswith("block") else "place_zone", o, t) for o, t in pairs)


@dataclass
class _Layout:
    """Incremental rejection sampler: zones first, then blocks kept out of zones and apart from each other."""

    rng: np.random.Generator
    taken: list[tuple[np.ndarray, float]] = field(default_factory=list)
    zones: list[ZoneSpec] = field(default_factory=list)
    blocks: list[BlockSpec] = field(default_factory=list)

    def zone(self, colour: str, half: float = ZONE_HALF) -> str:
        r = half * 1.45
        p = sample_xy(self.rng, self.taken, r)
        self.taken.append((p, r))
        name = "tray" if colour == "tray" else f"{colour} zone"
        self.zones.append(ZoneSpec(name, colour, (float(p[0]), float(p[1])), half))
        return name

    def block(self, colour: str) -> str:
        r = 0.045
        p = sample_xy(self.rng, self.taken, r)
        self.taken.append((p, r))
        name = f"{colour} block"
        self.blocks.append(BlockSpec(name, colour, (float(p[0]), float(p[1])), float(self.rng.uniform(-0.5, 0.5))))
        return name

    def scene(self) -> SceneSpec:
        return SceneSpec(tuple(self.blocks), tuple(self.zones))


class TaskFamily:
    """Base class: subclasses sample a layout and say what the instruction, subgoals and goal are."""

    name: str = ""
    templates: tuple[str, ...] = ()
    max_subgoals: int = 2

    def sample(self, rng: np.random.Generator) -> TaskInstance:
        for _ in range(50):
            try:
                return self._sample(rng)
            except RuntimeError:
                continue
        raise RuntimeError(f"{self.name}: could not sample a layout")

    def _sample(self, rng: np.random.Generator) -> TaskInstance:
        raise NotImplementedError

    def retarget(self, task: TaskInstance, k: int) -> TaskInstance | None:
        """The k-th other goal (k >= 1) in the same scene, or None when the family has fewer. Why: the same view
        under different instructions, with different key-frames, is what makes a planner read which object and which
        target the words name (`reset(options={"retarget": k})`)."""
        return None

    def _retarget(
        self,
        task: TaskInstance,
        goals: list[tuple[str, ...]],
        own: tuple[str, ...],
        k: int,
        names: tuple[str, ...],
        pairs=lambda goal: [goal],
        instruction: str | None = None,
    ) -> TaskInstance | None:
        """Goal k among `goals` other than `own`: each goal is its template words in `names` order, and `pairs(goal)`
        its (object, target) placements (default: the goal is one pair); `instruction`: kept instead of a new one."""
        goals = [g for g in goals if g != own]
        if not 1 <= k <= len(goals):
            return None
        goal = goals[k - 1]
        instruction = instruction or self._instruction(np.random.default_rng(k), **dict(zip(names, goal)))
        placed = pairs(goal)
        return TaskInstance(self.name, instruction, _pick_place(placed), task.scene, _goal(placed))

    def _instruction(self, rng: np.random.Generator, **kw: str) -> str:
        return self.templates[rng.integers(len(self.templates))].format(**kw)


def _other_orders(pairs: tuple[tuple[str, str], ...]) -> list[tuple[tuple[str, str], ...]]:
    """Every order of `pairs` (the task's own included), those whose first pick differs from the task's first, and
    among them the first picks taking turns: (a, b, c) -> (b, a, c), (c, a, b), (b, c, a), (c, b, a), (a, c, b)."""
    orders = list(itertools.permutations(pairs))
    turn = {o: sum(p[0] == o[0] for p in orders[:i]) for i, o in enumerate(orders)}
    return sorted(orders, key=lambda o: (o[0] == pairs[0], turn[o]))


class _AnyOrder(TaskFamily):
    """A family whose goal the scene fixes but not the order it is reached in (ClearTable, SortByColour)."""

    def retarget(self, task: TaskInstance, k: int) -> TaskInstance | None:
        """The same goal reached in another order: the same view and instruction, another first pick. Why: the
        words of the plan's first subgoal are then the only thing that says which block its key-frame lifts."""
        own = tuple((c.obj, c.target) for c in task.goal)
        return self._retarget(task, _other_orders(own), own, k, names=(), pairs=list, instruction=task.instruction)


def _colours(rng: np.random.Generator, k: int) -> list[str]:
    return [str(c) for c in rng.permutation(list(PALETTE))[:k]]


class PlaceInZone(TaskFamily):
    name = "PlaceInZone"
    templates = (
        "place the {obj} in the {zone}",
        "put the {obj} into the {zone}",
        "move the {obj} to the {zone}",
        "could you drop the {obj} inside the {zone}?",
    )

    def _sample(self, rng):
        lay = _Layout(rng)
        zones = [lay.zone(c) for c in _colours(rng, int(rng.integers(2, 4)))]
        cols = _colours(rng, int(rng.integers(2, 4)))
        blocks = [lay.block(c) for c in cols]
        obj, zone = blocks[0], zones[int(rng.integers(len(zones)))]
        pairs = [(obj, zone)]
        return TaskInstance(
            self.name, self._instruction(rng, obj=obj, zone=zone), _pick_place(pairs), lay.scene(), _goal(pairs)
        )

    def retarget(self, task: TaskInstance, k: int) -> TaskInstance | None:
        """Other (block, zone) pairs: first the same block to the other zones, then the other blocks."""
        pairs = [(b.name, z.name) for b in task.scene.blocks for z in task.scene.zones]
        own = task.goal[0].obj
        pairs.sort(key=lambda p: p[0] != own)  # stable: the task's block first
        return self._retarget(task, pairs, (own, task.goal[0].target), k, names=("obj", "zone"))


class Stack(TaskFamily):
    name = "Stack"
    templates = ("stack the {a} on the {b}", "put the {a} on top of the {b}", "place the {a} onto the {b}")

    def _sample(self, rng):
        lay = _Layout(rng)
        for c in _colours(rng, int(rng.integers(0, 2))):
            lay.zone(c)
        blocks = [lay.block(c) for c in _colours(rng, int(rng.integers(2, 4)))]
        a, b = blocks[0], blocks[1]
        pairs = [(a, b)]
        return TaskInstance(self.name, self._instruction(rng, a=a, b=b), _pick_place(pairs), lay.scene(), _goal(pairs))

    def retarget(self, task: TaskInstance, k: int) -> TaskInstance | None:
        """Other (block, block) pairs: first the same block onto the others, then the other blocks."""
        names = [b.name for b in task.scene.blocks]
        pairs = [(a, b) for a in names for b in names if a != b]
        own = task.goal[0].obj
        pairs.sort(key=lambda p: p[0] != own)
        return self._retarget(task, pairs, (own, task.goal[0].target), k, names=("a", "b"))


class Tower(TaskFamily):
    name = "Tower"
    max_subgoals = 4
    templates = (
        "build a tower with the {a} at the bottom, then the {b}, then the {c} on top",
        "stack the {a}, the {b} and the {c} into a tower, from bottom to top",
        "make a tower: {a} first, {b} in the middle, {c} on top",
    )

    def _sample(self, rng):
        lay = _Layout(rng)
        blocks = [lay.block(c) for c in _colours(rng, int(rng.integers(3, MAX_BLOCKS + 1)))]
        a, b, c = blocks[:3]
        pairs = [(b, a), (c, b)]
        inst = self._instruction(rng, a=a, b=b, c=c)
        return TaskInstance(self.name, inst, _pick_place(pairs), lay.scene(), _goal(pairs))

    def retarget(self, task: TaskInstance, k: int) -> TaskInstance | None:
        """Other towers of three: first the task's three blocks in the other orders, then towers with other blocks."""
        own = (task.goal[0].target, task.goal[0].obj, task.goal[1].obj)  # (bottom, middle, top)
        names = [b.name for b in task.scene.blocks]
        towers = sorted(itertools.permutations(names, 3), key=lambda t: set(t) != set(own))  # the task's blocks first
        return self._retarget(task, towers, own, k, names=("a", "b", "c"), pairs=lambda t: [(t[1], t[0]), (t[2], t[1])])


class SortByColour(_AnyOrder):
    name = "SortByColour"
    max_subgoals = 6
    templates = (
        "sort the blocks by colour into the zones",
        "put each block in the zone of its colour",
        "match every block with the zone of the same colour",
    )

    def _sample(self, rng):
        lay = _Layout(rng)
        cols = _colours(rng, 3)
        for c in cols:
            lay.zone(c)
        blocks = [lay.block(c) for c in cols]
        order = rng.permutation(len(blocks))
        pairs = [(blocks[i], f"{cols[i]} zone") for i in order]
        return TaskInstance(self.name, self._instruction(rng), _pick_place(pairs), lay.scene(), _goal(pairs))


class ClearTable(_AnyOrder):
    name = "ClearTable"
    max_subgoals = 6
    templates = (
        "clear the table into the tray",
        "put all the blocks in the tray",
        "tidy up: every block goes in the tray",
    )

    def _sample(self, rng):
        lay = _Layout(rng)
        lay.zone("tray", TRAY_HALF)
        blocks = [lay.block(c) for c in _colours(rng, int(rng.integers(2, 4)))]
        pairs = [(b, "tray") for b in blocks]
        return TaskInstance(self.name, self._instruction(rng), _pick_place(pairs), lay.scene(), _goal(pairs))


FAMILIES: dict[str, TaskFamily] = {f.name: f for f in (PlaceInZone(), Stack(), Tower(), SortByColour(), ClearTable())}


def tray_slots(zone: ZoneSpec, n: int = 3) -> list[np.ndarray]:
    """Where blocks go in the tray: side by side across the front camera's line of sight."""
    return [np.array([zone.xy[0], zone.xy[1] + (i - (n - 1) / 2) * TRAY_SLOT_DY]) for i in range(n)]
