"""What every training stage shares: checkpoints that survive a killed job, and one loop."""
