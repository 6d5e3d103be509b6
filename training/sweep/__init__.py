"""`mfql-sweep`: studies (arms x seeds x tasks of `mfql-train` runs) on Ray Tune, on one machine or a cluster.

arms.py (presets and the grid), trainable.py (one trial: one training run), runner.py (Ray and
Tune), tables.py and curves.py (what a study writes), cli.py (the command). docs/sweeps.md.
"""
