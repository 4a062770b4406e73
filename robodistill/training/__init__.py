"""What every trainer shares: the one gradient-step loop, checkpoints, best-policy
selection on validation seeds, optimizer presets and threads, SB3 callbacks."""
