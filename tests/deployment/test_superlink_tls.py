"""A real deployment on 127.0.0.1: SuperLink with TLS and SuperNode authentication.

The module starts one ``flower-superlink`` (TLS from ``scripts/make_dev_certs.py``,
``--enable-supernode-auth``), registers two SuperNode public keys with ``flwr supernode
register`` and starts two ``flower-supernode``s, each pointed at one site of a small synthetic
cohort with ``--node-config 'data-path="..."'``. Then:

- a SuperNode whose key was never registered is refused (it exits, the SuperLink logs why);
- ``flwr run`` against the SuperLink (a federation in a temporary ``$FLWR_HOME/config.toml``
  with the CA as ``root-certificates``) runs the product's ClientApp at both sites behind a
  census-only ServerApp (``census_app.py``), and both sites answer from their ``data-path``;
- with ``G2I_DEPLOYMENT_FULL=1`` the product's own ServerApp runs a tiny full pipeline
  (several minutes on 2 CPU cores, so not part of the default test run).

Every process this module starts is stopped at the end, children included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
EXECUTABLES = ("flower-superlink", "flower-supernode", "flwr")
CONNECTION = "g2i-local-tls"
SITES = ("site-0", "site-1")
SUBJECTS_PER_SITE = 12
PACKAGES = ("client", "server", "conf", "preprocessing", "g2i_models", "simulations")

pytestmark = pytest.mark.skipif(
    any(shutil.which(name, path=str(BIN)) is None for name in EXECUTABLES),
    reason="the Flower executables are not installed beside this Python",
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Flower starts some in their own sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class Processes:
    """The processes this module started; ``stop`` ends them and everything they started."""

    env: dict[str, str]
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, args: list[str], flwr_home: Path) -> subprocess.Popen[bytes]:
        flwr_home.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                args,
                env={**self.env, "FLWR_HOME": str(flwr_home)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> None:
        groups: set[int] = set()
        for proc in self.procs.values():
            for pid in [proc.pid, *_descendants(proc.pid)]:
                try:
                    groups.add(os.getpgid(pid))
                except ProcessLookupError:
                    pass
        groups.discard(os.getpgid(0))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pgid in groups:
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            if all(proc.poll() is not None for proc in self.procs.values()):
                break


@dataclass
class Federation:
    root: Path
    env: dict[str, str]  # for the flwr CLI: FLWR_HOME holds the connection to this SuperLink
    processes: Processes
    cohort: Path
    address: str  # the SuperLink, 127.0.0.1:<port>
    node_ids: dict[str, int]


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    proc = subprocess.run(
        [str(BIN / "flwr"), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"flwr {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _json(text: str) -> dict:
    return json.loads(text[text.index("{") :])


def _register(env: dict[str, str], public_key: Path, name: str) -> int:
    """``flwr supernode register``: the SuperLink now accepts the holder of this key."""
    out = _cli(env, "supernode", "register", str(public_key), CONNECTION, "--name", name,
               "--format", "json")  # fmt: skip
    return int(_json(out)["node-id"])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the SuperLink exited during start-up"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _make_cohort(out: Path) -> None:
    from conf import load_config, to_object
    from simulations.cohort import simulate_cohort

    cfg = to_object(load_config(config_name="simulate", overrides="cohort=small").cohort)
    cfg = replace(
        cfg,
        n_sites=len(SITES),
        subjects_per_site=[SUBJECTS_PER_SITE],
        voxel_size_mm=8.0,
        n_background_snps=200,
        workers=1,
    )
    simulate_cohort(cfg, out, seed=5)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("deployment")
    certs = root / "certs"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_dev_certs.py"),
            "--out",
            str(certs),
            "--supernodes",
            *SITES,
            "intruder",
        ],
        check=True,
        timeout=60,
    )
    cohort = root / "cohort"
    _make_cohort(cohort)

    env = {
        **os.environ,
        # The SuperLink starts its executor by name: this venv's executables first.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    processes = Processes(env, root)
    port = _free_port()
    cli_home = root / "flwr-cli"
    cli_home.mkdir()
    (cli_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f"[superlink.{CONNECTION}]\n"
        f'address = "127.0.0.1:{port}"\n'
        f'root-certificates = "{certs / "ca.crt"}"\n'
    )
    cli_env = {**env, "FLWR_HOME": str(cli_home)}
    try:
        superlink = processes.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--ssl-ca-certfile", str(certs / "ca.crt"),
                "--ssl-certfile", str(certs / "server.pem"),
                "--ssl-keyfile", str(certs / "server.key"),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1",
                "--port", str(port),
            ],
            root / "superlink-home",
        )  # fmt: skip
        _wait_for_port(port, superlink)
        node_ids = {site: _register(cli_env, certs / f"{site}.pub", site) for site in SITES}
        for site in SITES:
            node_config = f'data-path="{cohort / site}" work-path="{root / "work" / site}"'
            processes.start(
                site,
                [
                    str(BIN / "flower-supernode"),
                    "--superlink", f"127.0.0.1:{port}",
                    "--root-certificates", str(certs / "ca.crt"),
                    "--auth-supernode-private-key", str(certs / site),
                    "--node-config", node_config,
                    "--host", "127.0.0.1",
                    "--port", str(_free_port()),
                ],
                root / f"{site}-home",
            )  # fmt: skip
        yield Federation(root, cli_env, processes, cohort, f"127.0.0.1:{port}", node_ids)
    finally:
        processes.stop()


def _online(federation: Federation, timeout: float = 120) -> dict[int, str]:
    """Node ID -> status once every registered SuperNode is online."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = _json(_cli(federation.env, "supernode", "list", CONNECTION, "--format", "json"))
        status = {int(n["node-id"]): n["status"] for n in nodes["nodes"]}
        if all(status.get(i) == "online" for i in federation.node_ids.values()):
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"SuperNodes not online after {timeout} s: {status}")
        time.sleep(2)


def test_unregistered_supernode_is_refused(federation: Federation) -> None:
    certs = federation.root / "certs"
    intruder = federation.processes.start(
        "intruder",
        [
            str(BIN / "flower-supernode"),
            "--superlink", federation.address,
            "--root-certificates", str(certs / "ca.crt"),
            "--auth-supernode-private-key", str(certs / "intruder"),
            "--node-config", f'data-path="{federation.cohort / SITES[0]}"',
            "--host", "127.0.0.1",
            "--port", str(_free_port()),
            "--max-retries", "2",
        ],
        federation.root / "intruder-home",
    )  # fmt: skip
    try:
        code = intruder.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the unregistered SuperNode was not turned away within 120 s")
    log = federation.processes.log("intruder")
    assert code != 0, log
    assert "Failed to activate SuperNode" in log, log
    assert "SuperNode ID" not in log, log  # it never got a node ID, so it never pulled messages
    assert "No SuperNode found with the given public key" in federation.processes.log("superlink")
    # Only the two registered SuperNodes exist on the SuperLink.
    status = _online(federation)
    assert set(status) == set(federation.node_ids.values()), status


def _app_with_census_serverapp(dest: Path) -> Path:
    """The product's app with ``census_app`` as its ServerApp (the ClientApp unchanged)."""
    for package in PACKAGES:
        shutil.copytree(
            REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.so")
        )
    shutil.copy(Path(__file__).with_name("census_app.py"), dest / "census_app.py")
    pyproject = (REPO / "pyproject.toml").read_text()
    line = 'serverapp = "server.server_app:app"'
    assert line in pyproject, "pyproject.toml no longer names server.server_app:app"
    (dest / "pyproject.toml").write_text(pyproject.replace(line, 'serverapp = "census_app:app"'))
    return dest


def _flwr_run(federation: Federation, app: Path, overrides: str, timeout: float) -> str:
    proc = subprocess.run(
        [
            str(BIN / "flwr"), "run", str(app), CONNECTION, "--stream",
            "--run-config", f"experiment='tiny' overrides='{overrides}'",
        ],
        env=federation.env,
        cwd=app,
        capture_output=True,
        text=True,
        timeout=timeout,
    )  # fmt: skip
    # `flwr run` exits 0 even when the run failed: callers check what the run left behind.
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_flwr_run_reaches_both_sites_over_tls(federation: Federation) -> None:
    app = _app_with_census_serverapp(federation.root / "census-app")
    run_dir = federation.root / "census-run"
    _online(federation)
    output = _flwr_run(
        federation,
        app,
        f"data.root={federation.cohort} run_dir={run_dir} federation.min_sites={len(SITES)}",
        timeout=300,
    )
    report_path = run_dir / "census.json"
    assert report_path.exists(), output[-4000:]
    report = json.loads(report_path.read_text())
    assert report["failed"] == {}
    assert sorted(report["sites"]) == list(SITES)
    assert all(s["n-subjects"] == SUBJECTS_PER_SITE for s in report["sites"].values())
    # Each ClientApp read the folder its SuperNode's node config named.
    for site in SITES:
        assert f'data-path="{federation.cohort / site}"' in " ".join(
            federation.processes.procs[site].args
        )


@pytest.mark.skipif(
    os.environ.get("G2I_DEPLOYMENT_FULL") != "1",
    reason="the full pipeline takes minutes on 2 CPU cores: set G2I_DEPLOYMENT_FULL=1",
)
def test_full_tiny_run_over_tls(federation: Federation) -> None:
    run_dir = federation.root / "full-run"
    overrides = " ".join(
        [
            f"data.root={federation.cohort}",
            f"run_dir={run_dir}",
            f"federation.min_sites={len(SITES)}",
            "data.image_size=32",
            "federation.rounds_ae=1",
            "federation.rounds_ldm=1",
            "train.max_steps_ae=2",
            "train.max_steps_ldm=2",
            "model.sample_steps=2",
            "federation.synthetic_per_class=1",
        ]
    )
    _online(federation)
    output = _flwr_run(federation, REPO, overrides, timeout=1500)
    metrics_path = run_dir / "metrics.json"
    assert metrics_path.exists(), output[-4000:]
    metrics = json.loads(metrics_path.read_text())
    assert sorted(metrics["sites"]) == list(SITES)
    assert metrics["failures"] == {}
