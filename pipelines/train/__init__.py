"""Everything ``train-sp4d`` needs: the configuration, latents, the training loop, checkpoints and runs."""
