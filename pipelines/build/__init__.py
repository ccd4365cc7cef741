"""Everything ``build-kinematicparts20k`` needs: sources, fetch, Blender, filters, parts, colour, the Lance store
and the PyTorch dataset over it."""
