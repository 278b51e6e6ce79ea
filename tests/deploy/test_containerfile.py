"""The Containerfile builds what tests/deploy/test_install.py tested: its build stage runs
deploy/install.sh with every file that script reads, and the final stage is that install, a
non-root user and `tandem` as the entrypoint, nothing else. (No image can be built on the
machines that run the suite: base images cannot be pulled there.)"""

from __future__ import annotations

import json
import re
import tomllib

import yaml

from tests.deploy.conftest import KUBERNETES, ROOT


def stages() -> list[list[tuple[str, str]]]:
    """The Containerfile's instructions (continuation lines joined), split per FROM."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Containerfile").read_text())
    out: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        op, _, rest = line.strip().partition(" ")
        if op == "FROM":
            out.append([])
        if out:
            out[-1].append((op, rest))
    return out


def test_the_build_stage_runs_the_install_script_with_everything_it_reads() -> None:
    build, _ = stages()
    assert build[0][1].endswith(" AS build")
    copied = {src for op, rest in build if op == "COPY" for src in rest.split()[:-1]}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    # the wheel's packages, the lock, what the build backend reads (readme), and the script
    assert {*packages, "pyproject.toml", "uv.lock", "README.md", "deploy/install.sh"} <= copied
    # with the base image's interpreter, which the final stage has at the same path
    assert ("RUN", "bash deploy/install.sh --python /usr/local/bin/python3 /opt/tandem") in build


def test_the_final_stage_is_the_install_a_user_and_the_entrypoint() -> None:
    build, final = stages()
    assert final[0][1] == build[0][1].removesuffix(" AS build")  # the same base: the venv's python
    ops = [op for op, _ in final]
    assert ops.count("COPY") == 1 and ("COPY", "--from=build /opt/tandem /opt/tandem") in final
    runs = " ".join(rest for op, rest in final if op == "RUN")
    assert "apt-get" not in runs and "pip" not in runs  # no compilers, no package managers' work
    (user,) = [rest for op, rest in final if op == "USER"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user)  # numeric: runAsNonRoot can verify it
    (entrypoint,) = [rest for op, rest in final if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["tandem"]
    env = " ".join(rest for op, rest in final if op == "ENV")
    assert "PATH=/opt/tandem/bin:" in env and "LITELLM_LOCAL_MODEL_COST_MAP=True" in env


def test_the_cluster_runs_the_image_this_version_builds() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert image["newTag"] == version
    assert f"-t {image['newName']}:{version} " in (ROOT / "Containerfile").read_text()
    # and the gateway pods run as the image's user
    (gateway,) = [
        d for d in yaml.safe_load_all((KUBERNETES / "gateway.yaml").read_text()) if d["kind"] == "Deployment"
    ]
    uid, gid = next(rest for op, rest in stages()[1] if op == "USER").split(":")
    context = gateway["spec"]["template"]["spec"]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid))
