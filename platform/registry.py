"""String-keyed registries (timm style): one decorated class per component, built from config."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from veilfed.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories so configs can name components instead of importing them."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@REG.register("name")`` on a class or factory function."""

        def deco(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items)) or "(none)"
            raise UsageError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def build(self, name: str, **kwargs: Any) -> T:
        """Instantiate ``name`` with ``kwargs``; bad kwargs become a one-line UsageError."""
        factory = self.get(name)
        try:
            return factory(**kwargs)
        except TypeError as exc:
            raise UsageError(f"{self.kind} {name!r}: bad arguments ({exc})") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def import_submodules(package: str) -> None:
    """Import every module of ``package`` so their ``@REG.register`` decorators run.

    Registries fill themselves: adding a component is one new file, with no import list to edit.
    """
    import importlib
    import pkgutil

    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{package}.{info.name}")
