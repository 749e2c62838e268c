"""Planning: pure decisions from the inventory and an observation. No I/O."""
