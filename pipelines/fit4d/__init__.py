"""4D optimisation: a dynamic 3D asset with kinematic parts, fitted to a sample's multi-view videos."""
