"""Progressive multi-stage fine-tuning, run as its own process (arrives with the trainer issue)."""
