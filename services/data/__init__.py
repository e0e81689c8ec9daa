"""Datasets for RL prompts and evaluation, and LLM trial-and-error CoT synthesis for SFT."""
