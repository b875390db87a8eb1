"""Sendout's shared kernel: event schemas, topic names, settings, logging, metrics, plumbing.

Services import this package and never each other.
"""
