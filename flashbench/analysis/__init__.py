"""Reading records: one run's backends against each other, runs against runs, the noise test, the CI
gate and its thresholds."""
