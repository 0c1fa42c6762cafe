"""Evaluation metrics, one trusted implementation each: likelihoods, sample quality, RL statistics."""
