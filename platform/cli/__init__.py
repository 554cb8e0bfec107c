"""The ``veilfed`` command line: one module per command group (DESIGN.md CLI contract)."""
