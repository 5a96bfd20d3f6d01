"""(being written: see the issue that owns this command)."""
