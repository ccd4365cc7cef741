"""The procedural source: seeded, rigged and animated creatures written as .glb (the offline default).

Six kinds: ``arm`` (a 2-6 bone chain), ``snake`` (6-20 bones, travelling wave), ``biped``,
``quadruped`` and ``insect`` (branching bodies of 10-40 bones), and ``rigid`` (a robot arm whose bones
carry rigidly parented boxes and no skin). Everything follows from (kind, seed): the same pair gives
the same bytes. Joints are written depth-first, the order Blender gives the bones, so the part ids
that follow from it downstream are stable.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np

from pipelines.build.sources.rig import Clip, Rig, Swing, numbered, rig_to_glb
from pipelines.build.sources.rig_geometry import Tube
from pipelines.files import write_atomic
from schemas.assets import AssetRef

KINDS = ("arm", "snake", "biped", "quadruped", "insect", "rigid")
SOURCE = "procedural"
LICENSE = "CC0-1.0"
GENERATOR = "kinematicparts procedural"

X, Y, Z = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
SIDES = (("L", 1.0), ("R", -1.0))  # +X is the creature's left
_PALETTE = (
    (0.80, 0.45, 0.25),
    (0.35, 0.60, 0.30),
    (0.30, 0.45, 0.75),
    (0.75, 0.70, 0.35),
    (0.60, 0.35, 0.60),
    (0.55, 0.55, 0.55),
    (0.25, 0.60, 0.60),
)


def generate_rig(kind: str, seed: int) -> Rig:
    if kind not in KINDS:
        raise ValueError(f"unknown procedural kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng([KINDS.index(kind), int(seed)])
    rig = _BUILDERS[kind](rng)
    rig.colour = _PALETTE[int(rng.integers(len(_PALETTE)))]
    return rig


def generate_rig_bytes(kind: str, seed: int) -> bytes:
    return rig_to_glb(generate_rig(kind, seed), generator=GENERATOR)


def generate_asset(kind: str, seed: int, out_dir: Path) -> AssetRef:
    """Write ``<out_dir>/<kind>-<seed>.glb`` (atomically) and describe it."""
    rig = generate_rig(kind, seed)
    data = rig_to_glb(rig, generator=GENERATOR)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{kind}-{seed}.glb"
    # a crash never leaves a half-written asset under the final name, and concurrent writers of the
    # same asset (same bytes) each rename a complete file
    write_atomic(path, data)
    return AssetRef(
        file_identifier=f"procedural://{kind}/{seed}",
        source=SOURCE,
        license=LICENSE,
        file_type="glb",
        sha256=hashlib.sha256(data).hexdigest(),
        metadata={
            "kind": kind,
            "seed": int(seed),
            "n_bones": len(rig.bones),
            "clips": [c.name for c in rig.clips],
            "skinned": bool(rig.tubes),
        },
        local_path=str(path.resolve()),
    )


def generate_assets(n: int, out_dir: Path, seed: int = 0) -> list[AssetRef]:
    """``n`` assets cycling through :data:`KINDS`; asset ``i`` uses seed ``seed + i``."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    return [generate_asset(KINDS[i % len(KINDS)], seed + i, out_dir) for i in range(n)]


# -- kinds ----------------------------------------------------------------------------------------


def _arm(rng: np.random.Generator) -> Rig:
    rig = Rig()
    n = int(rng.integers(2, 7))
    lengths = rng.uniform(0.25, 0.5, n) * np.linspace(1.0, 0.6, n)
    directions = np.column_stack([rng.uniform(-0.25, 0.25, n), np.ones(n), rng.uniform(-0.25, 0.25, n)])
    offsets = directions / np.linalg.norm(directions, axis=1, keepdims=True) * lengths[:, None]
    base = rng.uniform(0.07, 0.11)
    bones = rig.add_limb(numbered("arm", n), None, (0, 0, 0), offsets, (base, 0.45 * base))
    lag = rng.uniform(0.5, 1.0)
    wave = [Swing(bones[0], Y, rng.uniform(30, 50))]
    wave += [Swing(b, Z, rng.uniform(25, 45), phase=i * lag) for i, b in enumerate(bones)]
    rig.clips.append(Clip("wave", 2.0, tuple(wave)))
    rig.clips.append(Clip("reach", 2.0, tuple(Swing(b, X, rng.uniform(20, 35)) for b in bones)))
    return rig


def _snake(rng: np.random.Generator) -> Rig:
    rig = Rig()
    n = int(rng.integers(6, 21))
    length, thickness = rng.uniform(1.6, 3.0), rng.uniform(0.06, 0.1)
    radii = thickness * np.minimum(1.0, 0.25 + 1.5 * np.linspace(0, 1, n + 1))  # thin tail
    radii[-1] = 0.6 * thickness
    bulges = [0.0] * (n - 1) + [0.3 * thickness]  # the head
    start = (0, thickness, -length / 2)
    bones = rig.add_limb(numbered("spine", n), None, start, [[0, 0, length / n]] * n, radii, bulges)
    wavelength = n / rng.uniform(1.0, 1.6)  # in segments
    amplitude = min(35.0, 180.0 / wavelength)  # about 60 degrees of bend over half a wave
    slither = [Swing(b, Y, amplitude, phase=-2 * np.pi * i / wavelength, cycles=2) for i, b in enumerate(bones)]
    rig.clips.append(Clip("slither", 2.0, tuple(slither)))
    return rig


def _biped(rng: np.random.Generator) -> Rig:
    rig = Rig()
    thigh, shin = rng.uniform(0.38, 0.48), rng.uniform(0.36, 0.46)
    has_feet, has_hands = bool(rng.integers(2)), bool(rng.integers(2))
    hip_height = thigh + shin + 0.07
    n_spine = int(rng.integers(1, 4))
    torso_length, torso_radius = rng.uniform(0.45, 0.6), rng.uniform(0.12, 0.16)

    pelvis = rig.add_bone("pelvis", None, (0, hip_height, 0))
    spine_step = [0, (torso_length - 0.12) / n_spine, 0]
    spine, points = rig.add_chain(numbered("spine", n_spine), pelvis, (0, hip_height + 0.12, 0), [spine_step] * n_spine)
    torso = np.vstack([[0, hip_height, 0], points])
    rig.tubes.append(Tube(torso, (pelvis, *spine), tuple(torso_radius * np.linspace(0.95, 1.05, len(torso)))))
    chest_top, chest = torso[-1], spine[-1]
    neck_and_head = [[0, 0.1, 0], [0, rng.uniform(0.22, 0.28), 0]]
    neck, head = rig.add_limb(["neck", "head"], chest, chest_top, neck_and_head, (0.05, 0.06, 0.05), (0.0, 0.07))

    arms, legs = {}, {}
    upper_arm, forearm = rng.uniform(0.26, 0.32), rng.uniform(0.24, 0.3)
    for side, sign in SIDES:
        steps = [[sign * 0.05, -upper_arm, 0], [sign * 0.02, -forearm, 0.03]]
        steps += [[0, -0.09, 0.01]] if has_hands else []
        shoulder = chest_top + (sign * (torso_radius + 0.03), -0.06, 0)
        arms[side] = rig.add_limb(numbered(f"arm_{side}", len(steps)), chest, shoulder, steps, (0.045, 0.028))
        steps = [[sign * 0.01, -thigh, 0.02], [0, -shin, -0.02]]
        steps += [[0, -0.03, 0.14]] if has_feet else []
        hip = (sign * 0.09, hip_height - 0.04, 0)
        legs[side] = rig.add_limb(numbered(f"leg_{side}", len(steps)), pelvis, hip, steps, (0.07, 0.04))

    stride, swing = rng.uniform(25, 35), rng.uniform(20, 30)
    walk = [Swing(spine[0], Y, 5), Swing(head, X, 4, cycles=2)]
    for side, opposite in (("L", 0.0), ("R", np.pi)):
        walk += [
            Swing(legs[side][0], X, stride, phase=opposite),
            Swing(legs[side][1], X, 20, phase=opposite + np.pi / 2, offset=20),  # knees only bend back
            Swing(arms[side][0], X, swing, phase=opposite + np.pi),  # arms against legs
            Swing(arms[side][1], X, 10, phase=opposite + np.pi, offset=-15),
        ]
    rig.clips.append(Clip("walk", 2.0, tuple(walk), bob=0.02))
    raise_arm = rng.uniform(55, 70)  # the left arm goes up to twice this and back down
    wave = (
        Swing(arms["L"][0], Z, raise_arm, phase=-np.pi / 2, offset=raise_arm),
        Swing(arms["L"][1], Z, 35, cycles=4),
        Swing(head, Z, 10),
        Swing(arms["R"][0], X, 10),
    )
    rig.clips.append(Clip("wave", 2.0, wave))
    return rig


def _quadruped(rng: np.random.Generator) -> Rig:
    rig = Rig()
    body_length, body_radius = rng.uniform(0.8, 1.2), rng.uniform(0.12, 0.18)
    upper, lower = rng.uniform(0.22, 0.32), rng.uniform(0.2, 0.3)
    leg_bones, n_spine, n_neck, n_tail = (int(rng.integers(a, b)) for a, b in ((2, 4), (2, 5), (1, 3), (0, 5)))
    height = upper + lower + (0.05 if leg_bones == 3 else 0.0) + 0.06
    rear, front = -body_length / 2, body_length / 2

    pelvis = rig.add_bone("pelvis", None, (0, height, rear))
    step = body_length / (n_spine + 1)
    spine, points = rig.add_chain(
        numbered("spine", n_spine), pelvis, (0, height, rear + step), [[0, 0, step]] * n_spine
    )
    torso = np.vstack([[0, height, rear], points])
    rig.tubes.append(Tube(torso, (pelvis, *spine), tuple(body_radius * np.array([0.85] + [1.0] * n_spine + [0.85]))))
    chest = spine[-1]

    neck_step = np.array([0, 0.8, 0.6]) * rng.uniform(0.2, 0.35) / n_neck
    steps = [neck_step] * n_neck + [np.array([0, -0.08, 1.0]) * rng.uniform(0.2, 0.3)]
    radii, bulges = [0.07] * (n_neck + 1) + [0.04], [0.0] * n_neck + [0.05]
    neck_root = (0, height + 0.05, front - 0.05)
    *neck, head = rig.add_limb(numbered("neck", n_neck) + ["head"], chest, neck_root, steps, radii, bulges)

    tail: list[int] = []
    if n_tail:
        tail_step = np.array([0, 0.45, -1.0]) * rng.uniform(0.08, 0.14)
        tail_root = (0, height + 0.03, rear - 0.05)
        tail = rig.add_limb(numbered("tail", n_tail), pelvis, tail_root, [tail_step] * n_tail, (0.035, 0.012))

    legs = {}
    width = body_radius * 0.7
    for end, z, parent in (("F", front - 0.1, chest), ("H", rear + 0.1, pelvis)):
        for side, sign in SIDES:
            steps = [[0, -upper, -0.03], [0, -lower, 0.03]] + ([[0, -0.05, 0.06]] if leg_bones == 3 else [])
            hip = (sign * width, height - 0.05, z)
            legs[end + side] = rig.add_limb(numbered(f"leg_{end}{side}", len(steps)), parent, hip, steps, (0.06, 0.03))

    stride = rng.uniform(25, 35)
    walk = [Swing(head, X, 8, cycles=2)] + [Swing(b, Y, 15, phase=i) for i, b in enumerate(tail)]
    for leg, phase in (("FL", 0.0), ("HR", 0.0), ("FR", np.pi), ("HL", np.pi)):  # diagonal pairs together
        walk += [Swing(legs[leg][0], X, stride, phase=phase), Swing(legs[leg][1], X, 25, phase=phase + np.pi / 2)]
    rig.clips.append(Clip("walk", 2.0, tuple(walk), bob=0.015))
    wag = [Swing(neck[0], Y, rng.uniform(25, 35)), Swing(head, X, 15, cycles=2)]
    wag += [Swing(b, Y, rng.uniform(30, 40), phase=0.6 * i, cycles=2) for i, b in enumerate(tail)]
    rig.clips.append(Clip("wag", 2.0, tuple(wag)))
    return rig


def _insect(rng: np.random.Generator) -> Rig:
    rig = Rig()
    height, half = rng.uniform(0.25, 0.35), rng.uniform(0.125, 0.175)  # half: half the thorax length
    n_abdomen, leg_bones, n_antenna = int(rng.integers(1, 4)), int(rng.integers(2, 4)), int(rng.integers(1, 3))

    thorax = rig.add_bone("thorax", None, (0, height, 0))
    rig.tubes.append(Tube(np.array([[0, height, -half], [0, height, half]]), (thorax,), (0.08, 0.08), (0.02,)))
    head_size = rng.uniform(0.1, 0.14)
    (head,) = rig.add_limb(["head"], thorax, (0, height, half), [[0, 0.02, head_size]], (0.05, 0.04), (0.04,))
    abdomen_step = np.array([0, 0.04, -1.0]) * rng.uniform(0.15, 0.25)
    radii, bulges = [0.08] + [0.1] * (n_abdomen - 1) + [0.03], [0.04] * n_abdomen
    abdomen_steps = [abdomen_step] * n_abdomen
    abdomen = rig.add_limb(numbered("abdomen", n_abdomen), thorax, (0, height, -half), abdomen_steps, radii, bulges)

    antennae = []
    for side, sign in SIDES:
        root = (sign * 0.03, height + 0.05, half + head_size * 0.7)
        steps = [np.array([sign * 0.4, 0.8, 1.0]) * 0.1] * n_antenna
        antennae += rig.add_limb(numbered(f"antenna_{side}", n_antenna), head, root, steps, (0.012, 0.006))

    legs = []
    femur, tibia = rng.uniform(0.15, 0.22), height + rng.uniform(0.05, 0.1)
    for pair, z in enumerate((half * 0.6, 0.0, -half * 0.6), start=1):
        splay = (2 - pair) * 0.5  # front legs reach forward, hind legs back
        for side, sign in SIDES:
            steps = [_unit(sign * 1.0, 0.7, splay) * femur, _unit(sign * 0.35, -1.0, splay * 0.3) * tibia]
            if leg_bones == 3:
                steps.append(np.array([sign * 0.08, -0.01, 0.0]))
            hip = (sign * 0.06, height, z)
            ids = rig.add_limb(numbered(f"leg_{side}{pair}", len(steps)), thorax, hip, steps, (0.025, 0.012))
            tripod = 0.0 if (side == "L") == (pair % 2 == 1) else np.pi  # L1, R2, L3 move together
            legs.append((ids[0], sign, tripod))

    sweep, lift = rng.uniform(20, 30), rng.uniform(10, 15)
    walk = [Swing(abdomen[0], Y, 8)]
    for femur_bone, sign, phase in legs:
        walk.append(Swing(femur_bone, Y, sweep, phase=phase, cycles=2))
        walk.append(Swing(femur_bone, Z, sign * lift, phase=phase + np.pi / 2, cycles=2))  # up while swinging forward
    walk += [Swing(b, X, 20, phase=i, cycles=3) for i, b in enumerate(antennae)]
    rig.clips.append(Clip("walk", 2.0, tuple(walk)))
    return rig


def _rigid(rng: np.random.Generator) -> Rig:
    """A robot arm: boxes parented to bones, and a skin that no mesh uses so importers build an armature."""
    rig = Rig()
    n_links, has_gripper = int(rng.integers(2, 7)), bool(rng.integers(2))
    base_height = rng.uniform(0.1, 0.18)
    base = rig.add_bone("base", None, (0, 0, 0))
    rig.pieces.append((base, np.array([0, base_height / 2, 0]), np.array([0.5, base_height, 0.5])))
    lengths = rng.uniform(0.25, 0.4, n_links) * np.linspace(1.0, 0.6, n_links)
    offsets = [[0, length, 0] for length in lengths]
    links, points = rig.add_chain(numbered("link", n_links), base, (0, base_height, 0), offsets)
    for link, start, end, width in zip(links, points[:-1], points[1:], np.linspace(0.16, 0.08, n_links)):
        rig.pieces.append((link, (start + end) / 2, np.array([width, (end[1] - start[1]) * 0.92, width])))
    fingers = []
    if has_gripper:
        for side, sign in SIDES:
            finger = rig.add_bone(f"finger_{side}", links[-1], points[-1] + (sign * 0.04, 0, 0))
            rig.pieces.append((finger, points[-1] + (sign * 0.04, 0.06, 0), np.array([0.025, 0.12, 0.05])))
            fingers.append((finger, sign))
    swings = [Swing(base, Y, rng.uniform(40, 70))]
    swings += [Swing(link, X, rng.uniform(20, 35), phase=i * 0.8) for i, link in enumerate(links)]
    swings += [Swing(finger, Z, sign * 15, cycles=2) for finger, sign in fingers]
    rig.clips.append(Clip("operate", 2.0, tuple(swings)))
    return rig


def _unit(*vector: float) -> np.ndarray:
    v = np.array(vector, dtype=np.float64)
    return v / np.linalg.norm(v)


_BUILDERS: dict[str, Callable[[np.random.Generator], Rig]] = {
    "arm": _arm,
    "snake": _snake,
    "biped": _biped,
    "quadruped": _quadruped,
    "insect": _insect,
    "rigid": _rigid,
}
