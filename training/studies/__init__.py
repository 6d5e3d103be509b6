"""Study analyses of a trained checkpoint, beside the sweeps that produce them (docs/results/):
`python -m training.studies.gradient_balance RUN`, `python -m training.studies.generator_quality RUN`
and `python -m training.studies.candidate_sources RUN --source ...` (the run's critic ranking
candidates from other generators, rolled out)."""
