"""From part videos to a rigged, animated asset (plain stages, no Prefect, no Ray): carve a mesh from
the alpha masks, vote 3D parts, build a skeleton, harmonic skinning weights, fit the animation, export
a .glb, and measure it against the true rig (``docs/lifting.md``)."""
