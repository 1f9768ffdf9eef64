"""What every training stage shares: checkpoints that survive a killed job, one loop, and the run
through to its files."""
