"""What a sweep is, as data: the case and its fields, the validated config (YAML read within limits), the
grid that expands it into cases, filters, per-sequence lengths, FLOP and byte counts, the record schema
and the metrics table every table, comparison, gate and plot reads. Imports nothing of flashbench's."""
