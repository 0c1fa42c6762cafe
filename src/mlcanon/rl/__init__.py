"""Reinforcement learning: tabular MDPs and dynamic programming, tabular learning, deep agents."""
