"""Rehearsal of the paper-scale path on stand-ins of the real architectures and real-layout data."""
