from __future__ import annotations

import numpy as np
import pytest

from veilfed.data.partition import label_skew, partition
from veilfed.errors import UsageError

LABELS = np.random.default_rng(0).integers(0, 9, size=360).tolist()


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "quantity"])
def test_disjoint_and_covering(scheme):
    parts = partition(LABELS, 6, scheme, alpha=0.5, seed=1)
    seen = [i for p in parts for i in p.indices]
    assert sorted(seen) == list(range(len(LABELS)))
    assert len({p.client_id for p in parts}) == 6


def test_skew_grows_as_alpha_falls():
    skews = [
        label_skew(partition(LABELS, 6, "dirichlet", alpha=a, seed=2), LABELS, 9)
        for a in (100.0, 1.0, 0.1)
    ]
    assert skews[0] < skews[1] < skews[2]


def test_quantity_skew_is_uneven():
    even = [len(p.indices) for p in partition(LABELS, 6, "iid", seed=3)]
    skewed = [len(p.indices) for p in partition(LABELS, 6, "quantity", alpha=0.3, seed=3)]
    assert max(even) - min(even) <= 1
    assert np.std(skewed) > 5 * max(np.std(even), 1.0)


def test_missing_modality_fraction():
    parts = partition(LABELS, 8, "iid", seed=4, missing={"audio": 0.5, "text": 0.25})
    assert sum("audio" in p.missing for p in parts) == 4
    assert sum("text" in p.missing for p in parts) == 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"scheme": "zipf"}, "unknown partitioning 'zipf'"),
        ({"num_clients": 1000}, "1000 clients for 360 clips"),
        ({"alpha": 0.0, "scheme": "dirichlet"}, "alpha must be > 0"),
        ({"missing": {"smell": 0.5}}, "unknown modality 'smell'"),
    ],
)
def test_bad_partition_requests(kwargs, match):
    args = {"labels": LABELS, "num_clients": 4, **kwargs}
    with pytest.raises(UsageError, match=match):
        partition(**args)
