"""Everything that touches ``bpy``: a warm session, the probe, the rig, the render grid.

Entry points: :class:`~pipelines.blender.session.BlenderSession`,
:func:`~pipelines.blender.probe.probe_asset`, :func:`~pipelines.blender.render.render_grid`.
See docs/rendering.md for the conventions and measured figures.
"""
