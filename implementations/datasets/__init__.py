"""Datasets with their own exact reference samplers."""
