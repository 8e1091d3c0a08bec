"""PyBullet backend: the Franka Panda of ``pybullet_data`` on the shared table, driven by inverse kinematics."""

from __future__ import annotations

import numpy as np
import pybullet
import pybullet_data
from pybullet_utils import bullet_client

from .scene import (
    BLOCK_HALF,
    BLOCK_MASS,
    CAMERAS,
    EE_HOME,
    ROBOT_BASE,
    TABLE_CENTER,
    TABLE_HALF,
    TABLE_RGBA,
    CameraSpec,
    SceneSpec,
    block_rgba,
    world_camera_pose,
    zone_rgba,
)

TIMESTEP = 1.0 / 200.0
SUBSTEPS = 8  # control period 0.04 s, as on MuJoCo
EE_LINK = 11  # panda_grasptarget
ARM = list(range(7))
FINGERS = [9, 10]
FINGER_OPEN = 0.035
GRASP_OFFSET = 0.005  # grasp point sits this far above panda_grasptarget: fingertips 1.5 cm below it
ARM_FORCES = [87.0] * 4 + [12.0] * 3
LOWER = [-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973]
UPPER = [2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973]
RANGES = [u - lo for u, lo in zip(UPPER, LOWER)]
REST = [0.0, 0.2, 0.0, -2.2, 0.0, 2.4, 0.785]


def _hand_orn(yaw: float) -> list[float]:
    return pybullet.getQuaternionFromEuler([np.pi, 0.0, yaw])


class PybulletBackend:
    control_dt = TIMESTEP * SUBSTEPS

    def __init__(self) -> None:
        self.p = p = bullet_client.BulletClient(connection_mode=pybullet.DIRECT)
        p.setAdditionalSearchPath(pybullet_data.getDataPath())
        p.setGravity(0, 0, -9.81)
        p.setTimeStep(TIMESTEP)
        p.setPhysicsEngineParameter(numSolverIterations=25)  # default 50; grasps hold with 25 and it is faster
        floor = p.createCollisionShape(p.GEOM_PLANE)
        self.floor = p.createMultiBody(0, floor, -1, [0, 0, -0.75])
        tx, ty = TABLE_CENTER
        half = [TABLE_HALF[0], TABLE_HALF[1], 0.02]
        self.table = p.createMultiBody(
            0,
            p.createCollisionShape(p.GEOM_BOX, halfExtents=half),
            p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=TABLE_RGBA),
            [tx, ty, -0.02],
        )
        p.changeDynamics(self.table, -1, lateralFriction=0.8)
        self.robot = p.loadURDF("franka_panda/panda.urdf", ROBOT_BASE, useFixedBase=True)
        for j in FINGERS:
            p.changeDynamics(self.robot, j, lateralFriction=1.5, spinningFriction=0.005)
        # couple the fingers (as in pybullet's panda demo): independent fingers let a held block drift sideways
        gear = p.createConstraint(self.robot, 9, self.robot, 10, p.JOINT_GEAR, [1, 0, 0], [0, 0, 0], [0, 0, 0])
        p.changeConstraint(gear, gearRatio=-1, erp=0.1, maxForce=50)
        self._block_col = p.createCollisionShape(p.GEOM_BOX, halfExtents=[BLOCK_HALF] * 3)
        self._visuals: dict[tuple, int] = {}
        self._bodies: dict[str, int] = {}
        self._zones: list[int] = []
        self._home_q = self._solve_home()

    def _visual(self, rgba, half_extents) -> int:
        key = (tuple(rgba), tuple(half_extents))
        if key not in self._visuals:
            self._visuals[key] = self.p.createVisualShape(self.p.GEOM_BOX, halfExtents=half_extents, rgbaColor=rgba)
        return self._visuals[key]

    def _ik(self, pos: np.ndarray, yaw: float) -> list[float]:
        rest = list(REST)
        rest[6] = float(np.clip(yaw + np.pi / 4, LOWER[6], UPPER[6]))
        q = self.p.calculateInverseKinematics(
            self.robot,
            EE_LINK,
            [pos[0], pos[1], pos[2] - GRASP_OFFSET],
            _hand_orn(yaw),
            lowerLimits=LOWER,
            upperLimits=UPPER,
            jointRanges=RANGES,
            restPoses=rest,
            maxNumIterations=20,
            residualThreshold=1e-4,
        )
        return list(q[:7])

    def _set_arm(self, q) -> None:
        for j, v in zip(ARM, q):
            self.p.resetJointState(self.robot, j, v, 0.0)

    def _solve_home(self) -> list[float]:
        self._set_arm(REST)
        for _ in range(30):  # IK from the rest pose, refined kinematically
            self._set_arm(self._ik(EE_HOME, 0.0))
        return [self.p.getJointState(self.robot, j)[0] for j in ARM]

    def reset(self, scene: SceneSpec) -> None:
        p = self.p
        for b in [*self._bodies.values(), *self._zones]:
            p.removeBody(b)
        self._bodies, self._zones = {}, []
        self._set_arm(self._home_q)
        for j in FINGERS:
            p.resetJointState(self.robot, j, FINGER_OPEN, 0.0)
        p.setJointMotorControlArray(
            self.robot, ARM, p.POSITION_CONTROL, targetPositions=self._home_q, forces=ARM_FORCES
        )
        p.setJointMotorControlArray(self.robot, FINGERS, p.POSITION_CONTROL, targetPositions=[FINGER_OPEN] * 2)
        for z in scene.zones:
            vis = self._visual(zone_rgba(z.colour), [z.half, z.half, 0.0008])
            self._zones.append(p.createMultiBody(0, -1, vis, [z.xy[0], z.xy[1], 0.0008]))
        for b in scene.blocks:
            vis = self._visual(block_rgba(b.colour), [BLOCK_HALF] * 3)
            orn = p.getQuaternionFromEuler([0, 0, b.yaw])
            body = p.createMultiBody(BLOCK_MASS, self._block_col, vis, [b.xy[0], b.xy[1], BLOCK_HALF], orn)
            p.changeDynamics(body, -1, lateralFriction=1.2, spinningFriction=0.002)
            self._bodies[b.name] = body

    def apply(self, target_pos: np.ndarray, target_yaw: float, close: bool) -> None:
        p = self.p
        q = self._ik(np.asarray(target_pos), target_yaw)
        p.setJointMotorControlArray(self.robot, ARM, p.POSITION_CONTROL, targetPositions=q, forces=ARM_FORCES)
        f = 0.0 if close else FINGER_OPEN
        p.setJointMotorControlArray(self.robot, FINGERS, p.POSITION_CONTROL, targetPositions=[f, f], forces=[40, 40])
        for _ in range(SUBSTEPS):
            p.stepSimulation()

    def block_poses(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {}
        for name, body in self._bodies.items():
            pos, (x, y, z, w) = self.p.getBasePositionAndOrientation(body)
            out[name] = (np.array(pos), np.array([w, x, y, z]))
        return out

    def ee_state(self) -> tuple[np.ndarray, float, float]:
        pos, orn = self.p.getLinkState(self.robot, EE_LINK, computeForwardKinematics=True)[4:6]
        R = np.array(self.p.getMatrixFromQuaternion(orn)).reshape(3, 3)
        yaw = float(np.arctan2(R[1, 0], R[0, 0]))
        opening = sum(self.p.getJointState(self.robot, j)[0] for j in FINGERS)
        return np.array([pos[0], pos[1], pos[2] + GRASP_OFFSET]), yaw, float(opening)

    def render(self, camera: str | CameraSpec, width: int, height: int) -> np.ndarray:
        spec = camera if isinstance(camera, CameraSpec) else CAMERAS[camera]
        ee, yaw, _ = self.ee_state() if spec.on_ee else (None, 0.0, 0.0)
        eye, target, up = world_camera_pose(spec, ee, yaw)
        view = self.p.computeViewMatrix(eye.tolist(), target.tolist(), up.tolist())
        proj = self.p.computeProjectionMatrixFOV(spec.fovy_deg, width / height, 0.02, 3.0)
        img = self.p.getCameraImage(
            width,
            height,
            view,
            proj,
            renderer=pybullet.ER_TINY_RENDERER,
            flags=pybullet.ER_NO_SEGMENTATION_MASK,
            shadow=0,
            lightDirection=[0.3, -0.3, 1.5],
        )[2]
        return np.asarray(img, dtype=np.uint8).reshape(height, width, 4)[:, :, :3].copy()

    def close(self) -> None:
        try:
            self.p.disconnect()
        except pybullet.error:
            pass
