"""Evaluation of trained checkpoints under the benchmark's corruption conditions."""
