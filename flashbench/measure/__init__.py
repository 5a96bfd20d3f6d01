"""The only code that runs attention on a device to measure it: one task in, one record out. Inputs
and the call come from :mod:`flashbench.attention` and :mod:`flashbench.backends`; here are correctness
against the reference, the separate peak-memory pass, the timer (batches held behind a spin kernel,
L2 flushed), statistics, energy, the GPU's state and the process state a call may change."""
