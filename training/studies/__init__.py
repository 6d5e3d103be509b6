"""Study analyses of a trained checkpoint, beside the sweeps that produce them (docs/results/):
`python -m training.studies.gradient_balance RUN` and `python -m training.studies.generator_quality RUN`."""
