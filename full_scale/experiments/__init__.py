"""Experiments built on the trainer: each module is one study with one command (see its docstring)."""
