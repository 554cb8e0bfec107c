"""Shared test helpers, importable from every test module as ``testkit.<module>``.

``fed``: a configured run and an in-process Flower grid; ``nodes``: real node configs for
in-process coordinator tests; ``cluster``: real SuperLink/SuperNode processes on 127.0.0.1;
``ray_cluster``: a real two-node Ray cluster on 127.0.0.1; ``model``: tiny model cores and
batches; ``privacy``: signed report chains, round logs and a reference accountant;
``deploy_files``: parsers and fixtures for the static checks of deploy/; ``podman``: images,
Compose and ``podman kube play`` for the container tests.
"""
