"""Offline RL agents: one file per method."""
