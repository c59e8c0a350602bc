"""Rewards: rule, KPI, LLM-judge and reward-model graders, composed into one weighted reward."""
