"""What every stage shares: path constants, the params schema, error classes, the `__main__`
wrapper, atomic writes; and, for the torch stages, deterministic torch and the dvclive logger."""
