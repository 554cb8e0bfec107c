"""Split a world's clips across clients: IID, Dirichlet label skew, quantity skew, missing modality.

The splitting itself is Flower Datasets' partitioners (IidPartitioner, DirichletPartitioner,
SizePartitioner) run over a tiny table of (clip index, label), so veilfed's partitions are the ones
FL papers using flwr-datasets get. Missing modalities are a per-client property on top.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veilfed.data import schema
from veilfed.errors import UsageError
from veilfed.tasks import TaskSpec, as_spec

SCHEMES = ("iid", "dirichlet", "quantity")


@dataclass(frozen=True)
class ClientPartition:
    """One client's share: clip indices into the world and modalities it does not have."""

    client_id: str
    indices: list[int]
    missing: tuple[str, ...] = field(default_factory=tuple)


def client_name(i: int) -> str:
    return f"client-{i:04d}"


def partition(
    labels: Sequence[int],
    num_clients: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    missing: dict[str, float] | None = None,
) -> list[ClientPartition]:
    """Partition clip indices ``0..len(labels)-1`` among ``num_clients`` clients.

    ``labels`` drive Dirichlet label skew (e.g. the action of each clip); ``alpha`` is the
    Dirichlet concentration for both label and quantity skew (smaller = more skewed);
    ``missing`` maps a modality to the fraction of clients that lack it.
    """
    from datasets import Dataset  # heavy import, only when partitioning
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, SizePartitioner

    n = len(labels)
    if scheme not in SCHEMES:
        raise UsageError(f"unknown partitioning {scheme!r}; valid: {', '.join(SCHEMES)}")
    if num_clients < 1 or num_clients > n:
        raise UsageError(
            f"{num_clients} clients for {n} clips: need 1 <= clients <= clips; "
            "synthesize more clips or use fewer clients"
        )
    if not alpha > 0:
        raise UsageError(f"partition alpha must be > 0, got {alpha}")
    if seed < 0:
        raise UsageError(f"partition seed must be >= 0, got {seed}")
    table = Dataset.from_dict({"idx": list(range(n)), "label": [int(x) for x in labels]})
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        part = IidPartitioner(num_partitions=num_clients)
        table = table.shuffle(seed=seed)
    elif scheme == "dirichlet":
        part = DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=alpha,
            min_partition_size=1 if n >= num_clients else 0,
            self_balancing=False,
            seed=seed,
        )
    else:
        sizes = _quantity_sizes(n, num_clients, alpha, rng)
        part = SizePartitioner(partition_sizes=sizes)
        table = table.shuffle(seed=seed)
    part.dataset = table
    try:
        shares = [sorted(part.load_partition(i)["idx"]) for i in range(num_clients)]
    except ValueError as exc:
        raise UsageError(
            f"cannot partition {n} clips into {num_clients} clients with "
            f"{scheme} (alpha={alpha}): {exc}"
        ) from None
    lacking = _missing_modalities(num_clients, missing or {}, rng)
    return [ClientPartition(client_name(i), shares[i], lacking[i]) for i in range(num_clients)]


def _quantity_sizes(n: int, k: int, alpha: float, rng: np.random.Generator) -> list[int]:
    """Dirichlet(alpha) shares of ``n`` clips, each client at least one, summing to ``n``."""
    extra = rng.multinomial(n - k, rng.dirichlet([alpha] * k))
    return [int(1 + e) for e in extra]


def _missing_modalities(
    k: int, missing: dict[str, float], rng: np.random.Generator
) -> list[tuple[str, ...]]:
    lacking: list[list[str]] = [[] for _ in range(k)]
    for modality, fraction in missing.items():
        if modality not in schema.MODALITIES:
            raise UsageError(
                f"partition.missing: unknown modality {modality!r}; valid: "
                f"{', '.join(schema.MODALITIES)}"
            )
        if not 0.0 <= fraction <= 1.0:
            raise UsageError(f"partition.missing.{modality} must be in [0, 1], got {fraction}")
        for i in rng.choice(k, size=round(fraction * k), replace=False):
            lacking[int(i)].append(modality)
    for i, mods in enumerate(lacking):
        if len(mods) == len(schema.MODALITIES):
            mods.remove("video")  # a client keeps at least one modality
            lacking[i] = mods
    return [tuple(m) for m in lacking]


def label_skew(parts: Sequence[ClientPartition], labels: Sequence[int], num_classes: int) -> float:
    """Mean total-variation distance between each client's label histogram and the global one."""
    labels = np.asarray(labels)
    overall = np.bincount(labels, minlength=num_classes) / len(labels)
    dists = []
    for p in parts:
        if not p.indices:
            continue
        h = np.bincount(labels[p.indices], minlength=num_classes) / len(p.indices)
        dists.append(0.5 * np.abs(h - overall).sum())
    return float(np.mean(dists))


def skew_labels(
    labels_of: Callable[[str], Mapping[str, Any]],
    ids: Sequence[str],
    specs: Mapping[str, TaskSpec] | None = None,
) -> list[int]:
    """The class index of each clip that Dirichlet label skew partitions by: of the first
    classification task declared (the synthetic preset's ``action`` by default); a clip without
    that label counts as class 0. ``labels_of(clip_id)`` gives a clip's stored labels."""
    specs = specs if specs is not None else {"action": as_spec("action")}
    spec = next((s for s in specs.values() if s.kind == "classification"), None)
    if spec is None:
        raise UsageError(
            "partition 'dirichlet' skews a classification task's labels; declare one in "
            "[model.tasks] or use partition 'iid' or 'quantity'"
        )
    out = []
    for cid in ids:
        value = labels_of(cid).get(spec.name)
        out.append(0 if value is None else spec.index(value, f"clip {cid!r}"))
    return out
