"""The dnetc model zoo: one `.dnet` file per model, a family file per family."""
