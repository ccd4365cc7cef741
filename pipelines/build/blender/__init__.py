"""Everything that touches ``bpy``: a warm session, the probe, the rig, the render grid.

Entry points: :class:`~pipelines.build.blender.session.BlenderSession`,
:func:`~pipelines.build.blender.probe.probe_asset`, :func:`~pipelines.build.blender.render.render_grid`.
See docs/rendering.md for the conventions and measured figures.
"""
