"""What ships: the wheel, the Docker image's health check, compose.yaml."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.gateway import REPO, running_gateway
from tests.support.servers import free_port


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A wheel built from a copy of the sources (as the Docker build does), and that
    wheel installed on its own into a directory: ``(wheel, site)``."""
    root = tmp_path_factory.mktemp("package")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "policies.yaml"):
        shutil.copy(REPO / name, source / name)
    for name in ("gateway", "policy-tests"):
        shutil.copytree(
            REPO / name,
            source / name,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
    wheels = root / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("score_gateway-*.whl")
    site = root / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-compile", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return wheel, site


def _from_site(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run with the installed package ahead of the checkout (its dependencies come
    from this environment: the install was --no-deps)."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    env = {k: v for k, v in env.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [*args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_wheel_carries_the_schema_and_the_shipped_cases(installed: tuple[Path, Path]) -> None:
    """The shipped policy, every case it names, and the JSON Schema are in the wheel,
    as files (not links into a checkout)."""
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "gateway/policies/policy.schema.json" in names
    assert "gateway/demo/policies.yaml" in names
    shipped_cases = {p.name for p in (REPO / "policy-tests").glob("*.yaml")}
    assert shipped_cases
    assert {n.rsplit("/", 1)[1] for n in names if n.startswith("gateway/demo/policy-tests/")} == (
        shipped_cases
    )
    with zipfile.ZipFile(wheel) as z:
        assert z.read("gateway/demo/policies.yaml") == (REPO / "policies.yaml").read_bytes()


def test_policy_test_runs_from_the_installed_wheel(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    """`gateway policy test --shipped` and `policy check --shipped` run the installed
    package's policy and cases, from a directory with no checkout in it."""
    _, site = installed
    where = _from_site(
        site, sys.executable, "-c", "import gateway; print(gateway.__file__)", cwd=tmp_path
    )
    assert where.stdout.strip().startswith(str(site)), where
    test = _from_site(
        site, sys.executable, "-m", "gateway", "policy", "test", "--shipped", cwd=tmp_path
    )
    assert test.returncode == 0, test.stderr
    assert re.search(r"^\d+ passed, 0 failed", test.stdout, re.M), test.stdout
    script = site / "bin" / "gateway"
    check = _from_site(site, str(script), "policy", "check", "--shipped", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert f"{site}/gateway/demo/policies.yaml: OK" in check.stdout
    assert "test cases pass" in check.stdout


# -- the Docker image ---------------------------------------------------------------------

DOCKERFILE = (REPO / "Dockerfile").read_text()


def _healthcheck_code() -> str:
    match = re.search(r'HEALTHCHECK .*?CMD \["python", "-c", "(.*?)"\]', DOCKERFILE, re.S)
    assert match, "the Dockerfile has no python HEALTHCHECK"
    return match.group(1)


def test_the_image_runs_as_a_user_who_owns_the_policy_directory() -> None:
    """The final stage switches to the gateway user before it runs anything, and the
    policy directory (not only the file) is that user's, so saves can rename into it."""
    final = DOCKERFILE[DOCKERFILE.rindex("\nFROM ") :]
    assert re.search(r"^USER gateway$", final, re.M)
    assert "chown gateway:gateway /srv/var /srv/policies" in final
    assert "COPY --chown=gateway:gateway policies.yaml /srv/policies/policies.yaml" in final
    assert "COPY --chown=gateway:gateway policy-tests /srv/policies/policy-tests" in final
    assert "GATEWAY_POLICIES=/srv/policies/policies.yaml" in final


def test_the_healthcheck_follows_gateway_port(tmp_path: Path) -> None:
    """The HEALTHCHECK command passes against a gateway on GATEWAY_PORT, whatever the
    port, and fails where nothing listens."""
    code = _healthcheck_code()
    assert "8080'" not in code.replace("'GATEWAY_PORT', '8080'", "")
    with running_gateway(tmp_path / "var") as gw:
        port = gw.url.rsplit(":", 1)[1]
        ok = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "GATEWAY_PORT": port},
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert ok.returncode == 0, ok.stderr
    down = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "GATEWAY_PORT": str(free_port())},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert down.returncode != 0


# -- compose.yaml -------------------------------------------------------------------------


def test_compose_file_is_valid() -> None:
    """docker-compose accepts compose.yaml, with the gateway, PostgreSQL and Redis.

    Skipped on a machine without docker-compose, except in CI (CI=true), where
    .ci/run installs Debian's package and a missing one is a failure."""
    compose = shutil.which("docker-compose")
    if compose is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("docker-compose is not installed; .ci/run installs it")
        pytest.skip("docker-compose is not installed")
    result = subprocess.run(
        [compose, "-f", str(REPO / "compose.yaml"), "config"],
        env={**os.environ, "POSTGRES_PASSWORD": "only-for-this-check"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    services = re.findall(r"^  (\w+):$", result.stdout.split("\nvolumes:")[0], re.M)
    assert {"gateway", "postgres", "redis"} <= set(services), result.stdout
    assert "postgresql://gateway:only-for-this-check@postgres:5432/gateway" in result.stdout
    assert "redis://redis:6379/0" in result.stdout
    refused = subprocess.run(
        [compose, "-f", str(REPO / "compose.yaml"), "config", "-q"],
        env={k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0  # no password written in the file, none defaulted
    assert "POSTGRES_PASSWORD" in refused.stderr
