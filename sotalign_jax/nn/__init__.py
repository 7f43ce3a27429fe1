"""Small Flax modules on top of frozen features: alignment heads (SOTAlign) and projectors (C-MCR)."""
