"""Progressive training on cached features (Ray Train, Ray Tune): its config, the per-stage loop, the losses,
which parts train in each stage, checkpoints, and the job that writes the model artifact."""
