"""mfql training: OGBench data, the MeanFlow Q-learning agent and its training loop (needs torch)."""
