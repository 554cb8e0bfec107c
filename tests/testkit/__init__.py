"""Shared test helpers, importable from every test module as ``testkit.<module>``.

``fed``: a configured run and an in-process Flower grid; ``cluster``: real SuperLink/SuperNode
processes on 127.0.0.1; ``model``: tiny model cores and batches; ``privacy``: signed report
chains and round logs.
"""
