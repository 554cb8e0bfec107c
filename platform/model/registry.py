"""The model core's registries: configs name encoders, fusions, heads and loss weightings by key.

Registering is a decorator on a class in its own file; the file's package ``__init__`` imports it
so the key exists as soon as :mod:`veilfed.model` is imported.
"""

from __future__ import annotations

from veilfed.registry import Registry

ENCODERS: Registry = Registry("encoder")
FUSIONS: Registry = Registry("fusion")
HEADS: Registry = Registry("head")
LOSSES: Registry = Registry("loss weighting")
