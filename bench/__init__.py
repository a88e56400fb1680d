"""Side-by-side benchmarks of the agent against raw restic (run with `python -m bench`)."""
