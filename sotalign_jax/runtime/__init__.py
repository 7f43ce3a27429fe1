"""What runs around the math: workdirs (metrics, checkpoints, results), atomic file writes and multi-host launch."""
