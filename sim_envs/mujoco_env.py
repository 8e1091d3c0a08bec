"""MuJoCo backend: our own MJCF table scene and a mocap-driven parallel gripper that grasps by friction."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless; must be set before mujoco is imported

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from .backend import quat_yaw, yaw_quat  # noqa: E402
from .scene import (  # noqa: E402
    BLOCK_HALF,
    BLOCK_MASS,
    CAMERAS,
    EE_HOME,
    MAX_BLOCKS,
    MAX_ZONES,
    TABLE_CENTER,
    TABLE_HALF,
    TABLE_RGBA,
    CameraSpec,
    SceneSpec,
    block_rgba,
    look_at_rotation,
    zone_rgba,
)

TIMESTEP = 0.002
SUBSTEPS = 20
FINGER_OPEN = 0.035  # per finger: 7 cm between the pads when open
PARK_Z = -0.5  # unused blocks rest on the floor, far off camera


def _mujoco_camera_axes(spec: CameraSpec) -> np.ndarray:
    """Columns x, y, z of a MuJoCo camera frame for `spec`: x right, y up, looking along -z."""
    return look_at_rotation(spec.eye, spec.target, spec.up) * np.array([1.0, -1.0, -1.0])


def _camera_xml(name: str) -> str:
    spec = CAMERAS[name]
    R = _mujoco_camera_axes(spec)
    x, y = R[:, 0], R[:, 1]
    xy = " ".join(f"{v:.6f}" for v in (*x, *y))
    pos = " ".join(f"{v:.6f}" for v in spec.eye)
    return f'<camera name="{name}" pos="{pos}" xyaxes="{xy}" fovy="{spec.fovy_deg}"/>'


def build_mjcf() -> str:
    """The fixed scene: all MAX_BLOCKS blocks and MAX_ZONES zones exist; reset recolours, moves or parks them."""
    h = BLOCK_HALF
    density = BLOCK_MASS / (2 * h) ** 3
    blocks = "\n".join(
        f'<body name="block{i}" pos="{2 + i * 0.1} 2 {PARK_Z}"><freejoint name="block{i}"/>'
        f'<geom name="block{i}" type="box" size="{h} {h} {h}" density="{density:.1f}" class="block"/></body>'
        for i in range(MAX_BLOCKS)
    )
    zones = "\n".join(
        f'<geom name="zone{i}" type="box" size="0.05 0.05 0.0008" pos="3 {i} 0.0008" contype="0" conaffinity="0"/>'
        for i in range(MAX_ZONES)
    )
    tx, ty = TABLE_CENTER
    return f"""
<mujoco model="emu35_tabletop">
  <option timestep="{TIMESTEP}" integrator="implicitfast" cone="elliptic" impratio="5"/>
  <visual><global offwidth="640" offheight="640"/><quality shadowsize="0"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5" specular="0 0 0"/></visual>
  <default>
    <geom solref="0.004 1"/>
    <default class="block"><geom condim="4" friction="1.2 0.02 0.002"/></default>
    <default class="finger"><geom condim="4" friction="1.5 0.02 0.002" rgba="0.25 0.25 0.28 1" mass="0.02"/></default>
  </default>
  <worldbody>
    <light pos="0.3 -0.3 1.5" dir="-0.2 0.2 -1" diffuse="0.4 0.4 0.4" castshadow="false"/>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="4 4 0.1" rgba="0.3 0.3 0.32 1"/>
    <geom name="table" type="box" pos="{tx} {ty} -0.02" size="{TABLE_HALF[0]} {TABLE_HALF[1]} 0.02"
          rgba="{" ".join(map(str, TABLE_RGBA))}" friction="0.8 0.01 0.001"/>
    {zones}
    {blocks}
    {_camera_xml("front")}
    <camera name="free" pos="1 0 1" xyaxes="0 1 0 -1 0 1" fovy="50"/>
    <body name="hand_target" mocap="true" pos="{EE_HOME[0]} {EE_HOME[1]} {EE_HOME[2]}"/>
    <body name="hand" pos="{EE_HOME[0]} {EE_HOME[1]} {EE_HOME[2]}" gravcomp="1">
      <freejoint name="hand"/>
      <inertial pos="0 0 0.05" mass="0.5" diaginertia="0.002 0.002 0.002"/>
      <geom type="box" size="0.015 0.055 0.012" pos="0 0 0.057" rgba="0.3 0.3 0.33 1" contype="0" conaffinity="0"/>
      <geom type="cylinder" size="0.012 0.05" pos="0 0 0.12" rgba="0.3 0.3 0.33 1" contype="0" conaffinity="0"/>
      {_camera_xml("wrist")}
      <body name="left_finger" gravcomp="1">
        <joint name="left" type="slide" axis="0 1 0" range="0 0.04" damping="3"/>
        <geom name="left_pad" type="box" size="0.011 0.006 0.03" pos="0 0.006 0.015" class="finger"/>
      </body>
      <body name="right_finger" gravcomp="1">
        <joint name="right" type="slide" axis="0 -1 0" range="0 0.04" damping="3"/>
        <geom name="right_pad" type="box" size="0.011 0.006 0.03" pos="0 -0.006 0.015" class="finger"/>
      </body>
    </body>
  </worldbody>
  <equality><weld body1="hand_target" body2="hand" solref="0.01 1"/></equality>
  <contact><exclude body1="left_finger" body2="right_finger"/></contact>
  <actuator>
    <position name="left" joint="left" kp="300" ctrlrange="0 0.04" forcerange="-12 12"/>
    <position name="right" joint="right" kp="300" ctrlrange="0 0.04" forcerange="-12 12"/>
  </actuator>
</mujoco>"""


class MujocoBackend:
    control_dt = TIMESTEP * SUBSTEPS

    def __init__(self) -> None:
        self.model = mujoco.MjModel.from_xml_string(build_mjcf())
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._block_qadr = [m.jnt_qposadr[m.joint(f"block{i}").id] for i in range(MAX_BLOCKS)]
        self._block_vadr = [m.jnt_dofadr[m.joint(f"block{i}").id] for i in range(MAX_BLOCKS)]
        self._block_geom = [m.geom(f"block{i}").id for i in range(MAX_BLOCKS)]
        self._block_body = [m.body(f"block{i}").id for i in range(MAX_BLOCKS)]
        self._zone_geom = [m.geom(f"zone{i}").id for i in range(MAX_ZONES)]
        self._finger_q = [m.jnt_qposadr[m.joint(n).id] for n in ("left", "right")]
        self._mocap = m.body("hand_target").mocapid[0]
        self._hand_q = m.jnt_qposadr[m.joint("hand").id]
        self._hand_body = m.body("hand").id
        self._names: list[str] = []
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self._yaw = 0.0

    def reset(self, scene: SceneSpec) -> None:
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        self._names = [b.name for b in scene.blocks]
        for i in range(MAX_BLOCKS):
            a = self._block_qadr[i]
            if i < len(scene.blocks):
                b = scene.blocks[i]
                d.qpos[a : a + 3] = (b.xy[0], b.xy[1], BLOCK_HALF)
                d.qpos[a + 3 : a + 7] = yaw_quat(b.yaw)
                m.geom_rgba[self._block_geom[i]] = block_rgba(b.colour)
            else:
                d.qpos[a : a + 7] = (2 + i * 0.1, 2, PARK_Z + BLOCK_HALF, 1, 0, 0, 0)
                m.geom_rgba[self._block_geom[i]] = (0, 0, 0, 0)
        for i, g in enumerate(self._zone_geom):
            if i < len(scene.zones):
                z = scene.zones[i]
                m.geom_pos[g] = (z.xy[0], z.xy[1], 0.0008)
                m.geom_size[g] = (z.half, z.half, 0.0008)
                m.geom_rbound[g] = float(np.linalg.norm(m.geom_size[g]))
                m.geom_rgba[g] = zone_rgba(z.colour)
            else:
                m.geom_pos[g] = (3, i, 0.0008)
                m.geom_rgba[g] = (0, 0, 0, 0)
        d.mocap_pos[self._mocap] = EE_HOME
        d.mocap_quat[self._mocap] = yaw_quat(0.0)
        d.qpos[self._hand_q : self._hand_q + 7] = (*EE_HOME, 1, 0, 0, 0)
        self._yaw = 0.0
        d.qpos[self._finger_q] = FINGER_OPEN
        d.ctrl[:] = FINGER_OPEN
        mujoco.mj_forward(m, d)

    def apply(self, target_pos: np.ndarray, target_yaw: float, close: bool) -> None:
        m, d = self.model, self.data
        d.ctrl[:] = 0.0 if close else FINGER_OPEN
        start, yaw0 = d.mocap_pos[self._mocap].copy(), self._yaw
        for k in range(1, SUBSTEPS + 1):
            s = k / SUBSTEPS  # move the mocap smoothly so contacts never see a teleport
            d.mocap_pos[self._mocap] = start + s * (target_pos - start)
            d.mocap_quat[self._mocap] = yaw_quat(yaw0 + s * (target_yaw - yaw0))
            mujoco.mj_step(m, d)
        self._yaw = float(target_yaw)

    def block_poses(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        q = self.data.qpos
        return {n: (q[a : a + 3].copy(), q[a + 3 : a + 7].copy()) for n, a in zip(self._names, self._block_qadr)}

    def ee_state(self) -> tuple[np.ndarray, float, float]:
        d = self.data
        a = self._hand_q
        return d.qpos[a : a + 3].copy(), quat_yaw(d.qpos[a + 3 : a + 7]), float(d.qpos[self._finger_q].sum())

    def render(self, camera: str | CameraSpec, width: int, height: int) -> np.ndarray:
        r = self._renderers.get((width, height))
        if r is None:
            r = self._renderers[(width, height)] = mujoco.Renderer(self.model, height, width)
        if isinstance(camera, CameraSpec):  # any world-frame look-at camera: move the spare "free" camera there
            self._place_free_camera(camera)
            camera = "free"
        r.update_scene(self.data, camera=camera)
        return r.render()

    def _place_free_camera(self, spec: CameraSpec) -> None:
        m, i = self.model, self.model.camera("free").id
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, _mujoco_camera_axes(spec).flatten())
        m.cam_pos[i], m.cam_quat[i], m.cam_fovy[i] = spec.eye, quat, spec.fovy_deg
        mujoco.mj_camlight(m, self.data)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
