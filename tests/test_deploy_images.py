"""The two images: deploy/docker/*.Dockerfile, their .dockerignore files, the README's builds.

Files the Dockerfiles COPY or bind-mount exist and no key, certificate, HE context or shard is
copied in (nor sent in the build context); torch comes from its CPU index at pyproject's pin; the
final stage takes the venv alone from the build stage and runs `veilfed <role> start` under tini,
as the non-root user both images share. The images are identical up to that USER, so every layer
with the venv is built and stored once. Only the coordinator exposes a port: the Fleet API's.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from testkit.deploy_files import (
    DEPLOY,
    IMAGE_UID,
    IMAGE_USER,
    PORT,
    ROOT,
    TINI,
    build_args,
    built_images,
    check_flags,
    image_user,
    instructions,
    split_flags,
    stages,
)

KEYISH = re.compile(r"(^|/)(certs|he|data)(/|$)|\.(key|pem|ctx|vfs)$")


def in_image(dockerfile: Path, path: str) -> Path:
    """The repository file a COPY of the Dockerfile's final stage puts at ``path``."""
    for word, rest in stages(instructions(dockerfile))[-1]:
        opts, words = split_flags(rest)
        if word != "COPY" or "--from" in opts or Path(path).parent != Path(words[-1]):
            continue
        for src in words[:-1]:
            found = [f for f in ROOT.glob(src) if f.name == Path(path).name]
            if found:
                return found[0]
    raise AssertionError(f"{dockerfile.name}: nothing copied to {path}")


@pytest.mark.parametrize("role", ["coordinator", "node"])
def test_dockerfile(role: str) -> None:
    path = DEPLOY / "docker" / f"{role}.Dockerfile"
    ins = instructions(path)
    assert ins[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")  # before FROM: every stage sees it
    assert [rest for word, rest in ins if word == "FROM"] == [
        "${BASE_IMAGE} AS build",
        "${BASE_IMAGE}",
    ]
    build, final = stages(ins)
    # Torch's CPU wheels unless deploy/wheels/ holds wheels; the version is pyproject's pin.
    assert build_args(build)["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert any("--extra-index-url $TORCH_INDEX" in rest for word, rest in build if word == "RUN")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "torch==2.14.1" in pyproject["project"]["dependencies"]
    for word, rest in ins:
        opts, words = split_flags(rest)
        if word == "COPY" and "--from" not in opts:  # a --from COPY's sources are in that stage
            *sources, _dest = words
            for src in sources:
                assert list(ROOT.glob(src)), f"{path.name}: COPY {src} matches nothing"
                assert not KEYISH.search(src), f"{path.name}: COPY {src} copies keys in"
        for mount in opts.get("--mount", []):
            m = dict(kv.partition("=")[::2] for kv in mount.split(","))
            if m["type"] == "bind" and "from" not in m:
                assert (ROOT / m["source"]).is_dir(), f"{path.name}: {mount} binds nothing"
    # deploy/wheels/ exists in every checkout (the bind mount needs it) and git keeps no wheel.
    assert (DEPLOY / "wheels" / ".gitignore").read_text().split() == ["*", "!.gitignore"]
    # The final stage takes the venv alone from the build stage: no build input, no key.
    for word, rest in final:
        opts, words = split_flags(rest)
        if word == "COPY" and "--from" in opts:
            assert opts["--from"] == ["build"] and words[:-1] == ["/opt/venv"], rest
    assert image_user(path) == (IMAGE_USER, IMAGE_UID)
    entry = json.loads(next(rest for word, rest in final if word == "ENTRYPOINT"))
    assert entry == [*TINI, "veilfed", role, "start"]
    ignore = (path.parent / f"{path.name}.dockerignore").read_text().split()
    assert {
        ".venv",
        ".git",
        "deploy/certs",
        "deploy/data",
        "deploy/he",
        "deploy/k8s/certs",
        "deploy/k8s/he",
    } <= set(ignore)
    if role == "coordinator":
        assert ("EXPOSE", str(PORT)) in final
        assert [rest for word, rest in ins if word == "EXPOSE"] == [str(PORT)]
        cmd = json.loads(next(rest for word, rest in final if word == "CMD"))
        found = check_flags(cmd, "coordinator", "start")
        assert found["--address"].endswith(f":{PORT}")
        assert in_image(path, found["--config"]).is_file()


def test_dockerfiles_share_layers() -> None:
    """Both images are the same up to the final stage's USER (comments aside), so they share
    every layer before it: the venv with torch is built and stored once."""
    node, coord = (
        instructions(DEPLOY / "docker" / f"{r}.Dockerfile") for r in ("node", "coordinator")
    )
    cut = node.index(("USER", IMAGE_USER))
    assert cut == coord.index(("USER", IMAGE_USER))
    assert node[:cut] == coord[:cut]
    assert len(stages(node[:cut])) == 2  # the build stage and the final stage's start


def test_readme_builds_both_images() -> None:
    images = built_images()
    assert images == {
        "veilfed-coordinator:latest": "deploy/docker/coordinator.Dockerfile",
        "veilfed-node:latest": "deploy/docker/node.Dockerfile",
    }
    for dockerfile in images.values():
        assert (ROOT / dockerfile).is_file()
