"""deploy/ray/cluster.yaml against the repository and the README's `veilfed simulate` on it.

Workers join the head at its port, the files the launcher mounts exist (but the operator's own),
the nodes install torch's CPU wheels and veilfed, and the README's driver line uses real options,
an experiment that exists and the head's port. tests/deployment/test_ray_cluster.py validates
the file against Ray's own schema and runs a real cluster.
"""

from __future__ import annotations

import re
import shlex

import yaml
from testkit.deploy_files import DEPLOY, README, ROOT, check_flags


def test_ray_cluster_config() -> None:
    cfg = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())
    for key in ("cluster_name", "provider", "auth", "setup_commands", "head_start_ray_commands"):
        assert key in cfg
    head = " ".join(cfg["head_start_ray_commands"])
    workers = " ".join(cfg["worker_start_ray_commands"])
    port = re.search(r"--head --port=(\d+)", head).group(1)  # type: ignore[union-attr]
    assert f"--address=$RAY_HEAD_IP:{port}" in workers
    for remote, local in cfg["file_mounts"].items():
        # the operator's own files (the Ray token) are not in the repository
        if not local.startswith("~/"):
            assert (ROOT / local).exists(), f"file_mounts {remote}: {local} missing"
    setup = " ".join(cfg["setup_commands"])
    assert "download.pytorch.org/whl/cpu" in setup and "pip install -e ~/veilfed" in setup
    sim = re.search(r"~/venv/bin/veilfed simulate\s*\\?\n?\s*(.*?)'", README, re.S).group(1)  # type: ignore[union-attr]
    found = check_flags(shlex.split(sim.replace("\\\n", " ")), "simulate")
    assert found["--ray-address"].endswith(f":{port}")
    assert (ROOT / found["--config"]).is_file()
