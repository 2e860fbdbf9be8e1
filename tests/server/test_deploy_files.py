"""The multi-machine deployment files (``deploy/``): the compose file's services run the commands and options this
ssdxl has, share the PostgreSQL store and Redis, and the image installs torch as the README does. (Docker itself is
not run here.)"""

import re
import shlex
from pathlib import Path

import yaml
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def test_compose_runs_postgres_redis_a_server_and_workers_on_one_store():
    from ssdxl.cli.main import app as cli

    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"postgres", "redis", "server", "worker"} <= set(services)
    for name in ("server", "worker"):
        service = services[name]
        assert service["environment"]["SSDXL_STORE"].startswith("postgresql://ssdxl:")
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        command = service["command"]
        assert command[0] == ("serve" if name == "server" else "worker") and "redis://redis:6379/0" in command
        checked = CliRunner().invoke(cli, [*command, "--help"])  # every option name exists (--help stops short)
        assert checked.exit_code == 0, checked.output
        assert {"postgres", "redis"} <= set(service["depends_on"])
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


def test_the_image_installs_torch_as_the_readme_does():
    readme, dockerfile = (ROOT / "README.md").read_text(), DOCKERFILE.read_text()
    torch_line = re.search(r"pip install (--no-deps --index-url \S+/whl/cpu -c constraints.txt torch)", readme)
    assert torch_line, "the README's install takes torch from PyTorch's CPU index"
    assert torch_line[1] in " ".join(shlex.split(dockerfile.replace("\\\n", " "), comments=True))
    assert '".[serve]"' in dockerfile and "constraints.txt" in dockerfile
