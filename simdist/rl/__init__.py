"""Reinforcement learning: PPO on privileged state, policy snapshots."""
