"""Denoiser backends: each answers "velocity for this latent, time and prompt"."""
