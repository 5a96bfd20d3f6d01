"""``flashbench profile``: where the time and the HBM bytes of an attention call go.

- :mod:`.torch_trace`: kernels per call under ``torch.profiler`` and a Chrome/Perfetto trace;
- :mod:`.ncu` / :mod:`.ncu_child`: DRAM bytes read and written per call, measured by Nsight
  Compute (``--clock-control none``) in a child process;
- :mod:`.io_model`: the FlashAttention papers' analytic IO model, in bytes;
- :mod:`.ceilings`: the device's roofs (``flashbench env --ceilings``): bf16 matmul burst and sustained,
  the streaming read of :mod:`.read_bandwidth`, the copy; :mod:`.datasheet`: the vendor's peaks per model;
- :mod:`.roofline` / :mod:`.plots`: achieved TFLOP/s against arithmetic intensity, figures;
- :mod:`.select`: the ``--case`` filter; :mod:`.session`: the whole command as a library call.

Nothing here is imported by ``flashbench run``: profiling is opt-in.
"""
