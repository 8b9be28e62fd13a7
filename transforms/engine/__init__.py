"""Beam-free orchestration: plain functions over stores that return result records."""
