"""Deferrable triggers: new movies in a watched folder, Slurm job completion."""
