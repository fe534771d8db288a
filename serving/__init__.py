"""Ray Serve application (built on the model artifact of the training stage)."""
