"""Training: aligned PPO, its config, checkpoints, logging and the run loop."""
