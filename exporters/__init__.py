"""mfql exporters: turn a training checkpoint into a self-describing policy bundle."""
