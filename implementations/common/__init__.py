"""Shared maths written once: ODE solvers, probability paths and time samplers."""
