"""Real servers the tests run (HAProxy, Redis) from Debian's packages, installed when missing:
CI starts from a clean machine, as root, with Debian's archive reachable."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def binary(name: str, package: str) -> str:
    """The path of `name`, installing `package` with apt-get when it is not there. Skips only
    where nothing can be installed (not root, no apt-get); a failed install fails."""
    found = shutil.which(name)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{name} is not installed (Debian package {package}) and cannot be here")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        subprocess.run(command, capture_output=True, timeout=600, check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
    found = shutil.which(name)
    assert found, f"apt-get install {package} did not give {name}"
    return found
