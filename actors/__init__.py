"""Actors of the gate and the pure rules they decide with."""
