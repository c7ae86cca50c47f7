"""Where and how tensors compute: device choice and mixed precision."""
