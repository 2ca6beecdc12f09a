"""What runs: the `dnetc` command line (and, to come, the trainer)."""
