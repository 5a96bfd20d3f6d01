"""Records on disk: ``results.json`` and ``results.csv`` written atomically after every record and read
back field by field, rounds merged into one row per task, and named baselines."""
