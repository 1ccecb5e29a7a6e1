"""Hyperparameter sweeps with Ray Tune (`tfcluster sweep`, `jobs/sweep_<workload>.py`)."""
