"""Sensors that wait in the triggerer: new movies of a live session."""
