"""Jupytext percent-format notebooks of the toy experiments; ``python -m toy.notebooks.render`` executes them."""
