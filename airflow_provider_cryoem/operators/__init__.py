"""Operators: one thin operator per stage, plus SlurmCommandOperator for any program on a Slurm cluster."""
