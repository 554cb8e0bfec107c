"""Real deployment on Flower's deployment engine: SuperLink/SuperNode processes, preflight checks.

``veilfed coordinator start`` and ``veilfed node start`` are thin CLIs over this package; see
docs/deploy.md for how the pieces fit.
"""
