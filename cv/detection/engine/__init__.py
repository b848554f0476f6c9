"""Training machinery: the trainer and its step modes, graph mode, checkpoints, distributed helpers, the launcher."""
