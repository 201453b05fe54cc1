"""The deployment scripts on their own (seconds): certificates, the gateway's filter, the FAB.

``test_superlink_tls.py`` runs them together against real Flower processes.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import stat
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).parents[2]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"g2i_{name}", REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


certs = _script("make_dev_certs")
gateway = _script("fleet_gateway")


def test_a_site_is_added_to_an_existing_ca(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    certs.main(["--out", str(out), "--supernodes", "site-0"])
    ca, server = (out / "ca.crt").read_bytes(), (out / "server.pem").read_bytes()
    certs.main(["--out", str(out), "--supernodes", "site-1"])
    assert (out / "ca.crt").read_bytes() == ca and (out / "server.pem").read_bytes() == server
    assert (out / "site-1").exists() and (out / "site-1.pub").exists()
    certs.main(["--out", str(out), "--supernodes", "--new-ca"])
    assert (out / "ca.crt").read_bytes() != ca


def test_private_keys_are_never_readable_by_others(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    certs.main(["--out", str(out), "--supernodes", "site-0"])
    for name in ("ca.key", "server.key", "site-0"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(out.stat().st_mode) == 0o700


def test_existing_site_keys_are_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    certs.main(["--out", str(out), "--supernodes", "site-0"])
    key = (out / "site-0").read_bytes()
    with pytest.raises(SystemExit):
        certs.main(["--out", str(out), "--supernodes", "site-0"])
    assert (out / "site-0").read_bytes() == key


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "x.pub", "ca", "", "a" * 64, "é"])
def test_unsafe_site_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not allowed|reserved"):
        certs.check_site_name(name)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/v1/fleet/pull-messages", True),
        ("POST", "/v1/fleet/activate-node", True),
        ("POST", "/v1/control/start-run", False),
        ("POST", "/v1/control/register-node", False),
        ("POST", "/v1/runtime/push-messages", False),
        ("GET", "/v1/fleet/pull-messages", False),
        ("POST", "/v1/fleet/../control/start-run", False),
        ("POST", "/v1/fleet/%2e%2e/control/start-run", False),
        ("POST", "/v1/fleet/pull-messages/../../control/list-runs", False),
        ("POST", "/docs", False),
    ],
)
def test_the_gateway_lets_only_fleet_calls_through(method: str, path: str, allowed: bool) -> None:
    assert gateway.is_fleet_request(method, path) is allowed


def test_gitignored_deployment_state_stays_out_of_the_bundle(tmp_path: Path) -> None:
    """The old README's layout: Flower homes, certificates and runs inside the app folder."""
    from flwr.cli.build import build_fab_from_disk

    app = tmp_path / "app"
    for package in ("client", "server", "conf", "preprocessing", "g2i_models"):
        shutil.copytree(REPO / package, app / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", ".gitignore"):
        shutil.copy(REPO / name, app / name)
    clean = build_fab_from_disk(app)
    for home in (".flwr-superlink", ".flwr-site-0", "deploy/coordinator/flwr-superlink"):
        shutil.copytree(app / "server", app / home / "apps" / "g2i-fed" / "server")
    (app / "certificates").mkdir()
    (app / "certificates" / "settings.json").write_text("{}")
    (app / "runs" / "r").mkdir(parents=True)
    (app / "runs" / "r" / "metrics.json").write_text("{}")
    (app / "superlink.db").write_bytes(b"x" * 1000)
    fab = build_fab_from_disk(app)
    assert len(fab) == len(clean)
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert not [n for n in names if n.startswith((".flwr", "deploy/", "certificates/", "runs/"))]
