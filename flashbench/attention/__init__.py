"""A case's tensors and attention in plain PyTorch, below the backends and the measurement: the inputs
every backend receives (``inputs``), their per-sequence views (``sequences``), and the masks and the
reference formula every comparison uses (``reference``)."""
