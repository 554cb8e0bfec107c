"""The ``veilfed`` command line: one module per command group."""
