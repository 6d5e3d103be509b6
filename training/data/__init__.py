"""OGBench-format datasets: generation with the scripted oracles, loading and validation."""
