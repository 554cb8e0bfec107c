"""Declared tasks (veilfed.tasks): names, label spaces and table types are checked with one line
naming the config field, and class indices never shadow numeric class names."""

from __future__ import annotations

import pytest

from veilfed.errors import UsageError
from veilfed.tasks import KINDS, RESERVED, task_spec, task_specs

SCENE = {"kind": "classification", "classes": ["cartoon", "street"]}


@pytest.mark.parametrize("name", ["a/b", "1st", "a.b", "", "x y", "a=b", "é"])
def test_a_task_name_that_cannot_be_a_column_metric_or_key_is_refused(name) -> None:
    with pytest.raises(UsageError, match="must start with a letter") as err:
        task_specs({name: SCENE})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", sorted(RESERVED))
def test_a_labels_column_of_its_own_is_no_task_name(name) -> None:
    with pytest.raises(UsageError, match="is a labels column of its own"):
        task_spec(name, SCENE)


def test_usable_names_pass() -> None:
    assert list(task_specs({"scene": SCENE, "Scene_2": SCENE, "mos-x": {"kind": "binary"}}))


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"kind": ["classification"], "classes": ["a", "b"]}, "kind"),
        ({"kind": "classification", "classes": 3}, "classes"),
        ({"kind": "classification", "classes": "ab"}, "classes"),
        ({"kind": "classification", "classes": ["a", ""]}, "classes"),
        ({"kind": "binary", "targets": ["x"]}, "targets"),
        ({"kind": "binary", "targets": {"target": 3}}, "targets"),
        ({"kind": "binary", "weight": "1"}, "weight"),
        ({"kind": "binary", "weight": float("nan")}, "weight"),
        ({"kind": "regression", "range": [2, 1]}, "range"),
        ({"kind": "detection", "classes": ["car"], "slots": 0}, "slots"),
        ({"kind": "restoration", "degradations": ["rain"]}, "degradations"),
        ({"kind": "binary", "colour": "red"}, "unknown field 'colour'"),
    ],
)
def test_a_table_of_the_wrong_type_names_its_field(table, field) -> None:
    with pytest.raises(UsageError) as err:
        task_spec("t", table)
    message = str(err.value)
    assert message.startswith("model.tasks.t") and field in message and "\n" not in message


def test_numeric_class_names_are_never_read_as_indices() -> None:
    digits = task_spec("stars", {"kind": "classification", "classes": ["1", "2", "3"]})
    assert digits.index("1", "x") == 0 and digits.index(3, "x") == 2
    with pytest.raises(UsageError, match="'0' is not a class"):
        digits.index("0", "x")
    named = task_spec("scene", SCENE)
    assert named.index("1", "x") == 1 and named.index("street", "x") == 1
    for bad in ("-1", "2", "1.0", " "):
        with pytest.raises(UsageError, match="is not a class of task 'scene'"):
            named.index(bad, "x")


def test_two_tasks_of_a_kind_need_their_own_target_keys() -> None:
    tasks = {"a": SCENE, "b": SCENE | {"targets": {"target": "a"}}}
    with pytest.raises(UsageError, match="key 'a' is already task 'a'"):
        task_specs(tasks)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_has_default_target_keys_named_by_the_task(kind) -> None:
    classes = ["p", "q"] if kind in {"classification", "multilabel", "detection"} else []
    classes = classes or (["p"] if kind in {"segmentation", "keypoints", "qa"} else [])
    spec = task_spec("t", {"kind": kind, "classes": classes})
    assert spec.keys[0] == "t" and all(k.startswith("t") for k in spec.keys)
