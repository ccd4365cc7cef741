"""Materials that carry part ids: the asset's own materials, split per part, with ``pass_index``.

Cycles writes the Material Index pass from each pixel's first sample, unblended, so giving every
(material, part) pair its own copy of the material with ``pass_index = part + 1`` makes the ordinary
RGB render yield an exact part-id image (0 = background). The copies share node trees' images, so the
RGB render looks exactly as before.
"""

from __future__ import annotations

import bpy
import numpy as np

PART_ATTRIBUTE = "kp_part"  # face attribute: part id per face, for the flat verification render
FLAT_COLOUR_ATTRIBUTE = "kp_part_colour"


def face_parts(obj: bpy.types.Object, vertex_part: np.ndarray, n_parts: int) -> np.ndarray:
    """Part per face: the part most of its corners belong to (ties: the lower part id)."""
    mesh = obj.data
    n_faces = len(mesh.polygons)
    loop_vertex = np.empty(len(mesh.loops), dtype=np.int64)
    mesh.loops.foreach_get("vertex_index", loop_vertex)
    loop_total = np.empty(n_faces, dtype=np.int64)
    mesh.polygons.foreach_get("loop_total", loop_total)
    face_of_loop = np.repeat(np.arange(n_faces), loop_total)
    loop_part = vertex_part[loop_vertex]
    counts = np.zeros((n_faces, n_parts + 1), dtype=np.int64)  # last column: corners with no part
    np.add.at(counts, (face_of_loop, np.where(loop_part >= 0, loop_part, n_parts)), 1)
    has_part = counts[:, :n_parts].sum(axis=1) > 0
    return np.where(has_part, counts[:, :n_parts].argmax(axis=1), -1)


def assign_part_materials(
    obj: bpy.types.Object, parts: np.ndarray, copies: dict[tuple[int, int], bpy.types.Material]
) -> None:
    """Re-slot ``obj`` so that each face's material is the copy of its own material for its part.

    ``copies`` is shared across the objects of one asset, so objects that share a material share
    its per-part copies.
    """
    if obj.data.users > 1:
        obj.data = obj.data.copy()  # the part split is per object; instanced meshes may differ
    mesh = obj.data
    n_faces = len(mesh.polygons)
    originals = [slot.material for slot in obj.material_slots] or [None]
    slot_of_face = np.empty(n_faces, dtype=np.int64)
    mesh.polygons.foreach_get("material_index", slot_of_face)
    slot_of_face = np.clip(slot_of_face, 0, len(originals) - 1)
    keys = slot_of_face * (int(parts.max(initial=0)) + 2) + (parts + 1)
    unique, new_slot = np.unique(keys, return_inverse=True)
    materials = []
    for key in unique:
        first = int(np.flatnonzero(keys == key)[0])
        original, part = originals[slot_of_face[first]], int(parts[first])
        cache_key = (original.as_pointer() if original is not None else 0, part)
        if cache_key not in copies:
            copy = original.copy() if original is not None else _plain_material()
            copy.name = f"{original.name if original else 'plain'}.part{part}"
            copy.pass_index = part + 1
            copies[cache_key] = copy
        materials.append(copies[cache_key])
    mesh.materials.clear()
    for material in materials:
        mesh.materials.append(material)
    for slot in obj.material_slots:
        slot.link = "DATA"  # object-linked slots would hide the mesh's new materials
    mesh.polygons.foreach_set("material_index", new_slot.astype(np.int32))
    attribute = mesh.attributes.get(PART_ATTRIBUTE) or mesh.attributes.new(PART_ATTRIBUTE, "INT", "FACE")
    attribute.data.foreach_set("value", parts.astype(np.int32))
    mesh.update()


def flat_part_material(palette: np.ndarray) -> bpy.types.Material:
    """An emission-only material for the verification render: each face emits its part's palette
    colour (from a face colour attribute), exactly, with no light sampling of the faces."""
    for mesh in {o.data for o in bpy.context.scene.objects if o.type == "MESH"}:
        ids = mesh.attributes.get(PART_ATTRIBUTE)
        if ids is None:
            continue
        part = np.empty(len(mesh.polygons), dtype=np.int32)
        ids.data.foreach_get("value", part)
        lookup = np.vstack([np.asarray(palette, np.float32) / 255.0, np.zeros((1, 3), np.float32)])
        colours = np.concatenate([lookup[part], np.ones((len(part), 1), np.float32)], axis=1)
        colour = mesh.attributes.get(FLAT_COLOUR_ATTRIBUTE) or mesh.attributes.new(
            FLAT_COLOUR_ATTRIBUTE, "FLOAT_COLOR", "FACE"
        )
        colour.data.foreach_set("color", colours.ravel())
    material = bpy.data.materials.new("kp_flat_parts")  # Blender 5: always node-based
    nodes = material.node_tree.nodes
    nodes.clear()
    attribute = nodes.new("ShaderNodeAttribute")
    attribute.attribute_type = "GEOMETRY"
    attribute.attribute_name = FLAT_COLOUR_ATTRIBUTE
    emission = nodes.new("ShaderNodeEmission")
    emission.inputs["Strength"].default_value = 1.0
    output = nodes.new("ShaderNodeOutputMaterial")
    material.node_tree.links.new(attribute.outputs["Color"], emission.inputs["Color"])
    material.node_tree.links.new(emission.outputs["Emission"], output.inputs["Surface"])
    material.cycles.emission_sampling = "NONE"  # else every face is a light: ~8x slower on big meshes
    return material


def _plain_material() -> bpy.types.Material:
    material = bpy.data.materials.new("plain")
    material.diffuse_color = (0.6, 0.6, 0.6, 1.0)
    return material
