"""A real deployment on 127.0.0.1, started the way the README says (``scripts/deploy.py``).

The coordinator runs ``flower-superlink`` on 127.0.0.1 (TLS from ``make_dev_certs.py``,
SuperNode authentication, a database file) and the Fleet-only gateway on the site-facing
address; two registered sites run ``flower-supernode`` through that gateway, each pointed at
one site of a small synthetic cohort. All state (Flower homes with their installed app
copies, database, logs) lives in a ``deploy/`` folder *inside* the app that is run, the
worst case for the bundle: ``.gitignore`` must keep it out. Then:

- an unregistered site is refused, with a message that says to register its key;
- ``coordinator list`` names both sites; a stranger holding ca.crt who reaches the
  site-facing port cannot register a node, list runs or submit a run;
- census runs (the product's ClientApp behind ``census_app.py``) reach both sites, and the
  bundle ``flwr run`` builds stays the same size after every run;
- a SuperLink restart keeps the registered sites and the run history; the sites reconnect
  and the next run reaches both;
- (slow) the product's full pipeline, tiny, with site-1 killed during the LDM round:
  metrics.json and rounds.jsonl name site-1 with the phase and round; site-0 finishes.

Every process this module starts is stopped at the end, children included.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
EXECUTABLES = ("flower-superlink", "flower-supernode", "flwr")
SITES = ("site-0", "site-1")
SUBJECTS_PER_SITE = 12


def _app_packages() -> list[str]:
    """The project's packages, as pyproject's ``packages.find`` includes them."""
    import fnmatch
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted(
        d.name
        for d in REPO.iterdir()
        if (d / "__init__.py").exists() and any(fnmatch.fnmatch(d.name, p) for p in patterns)
    )


PACKAGES = _app_packages()
CENSUS_RUNS = 3

pytestmark = pytest.mark.skipif(
    any(shutil.which(name, path=str(BIN)) is None for name in EXECUTABLES),
    reason="the Flower executables are not installed beside this Python",
)


def _load_deploy() -> ModuleType:
    spec = importlib.util.spec_from_file_location("g2i_deploy", REPO / "scripts" / "deploy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


deploy = _load_deploy()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


@dataclass
class Deployment:
    root: Path
    app: Path  # the census app, holding the deployment's state in app/deploy/
    certs: Path
    cohort: Path
    state: Path  # the coordinator's state folder
    site_address: str  # the gateway: what sites (and strangers) reach
    control_port: int  # the SuperLink, 127.0.0.1 only
    env: dict[str, str]

    def cmd(self, *args: str, check: bool = True, timeout: float = 180) -> str:
        proc = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "deploy.py"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert proc.returncode == 0, f"deploy.py {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
        return proc.stdout + proc.stderr

    def coordinator(self, command: str, *args: str) -> str:
        return self.cmd("coordinator", command, "--state", str(self.state), *args)

    def site_state(self, site: str) -> Path:
        return self.app / "deploy" / site

    def start_site(self, site: str, key: str | None = None, check: bool = True) -> str:
        return self.cmd(
            "site", "start", site,
            "--state", str(self.site_state(site)),
            "--superlink", self.site_address,
            "--ca", str(self.certs / "ca.crt"),
            "--key", str(self.certs / (key or site)),
            "--data-path", str(self.cohort / (site if site in SITES else SITES[0])),
            "--work-path", str(self.root / "work" / site),
            "--policy-file", str(self.root / "policy.yaml"),
            "--port", str(_free_port()),
            check=check,
        )  # fmt: skip

    def listing(self) -> dict[str, dict[str, str]]:
        rows = json.loads(self.coordinator("list", "--json"))
        return {row["site"]: row for row in rows}

    def flwr(self, *args: str, home: Path | None = None, timeout: float = 300):  # noqa: ANN201
        env = deploy.flower_env(home or self.state / "flwr-cli")
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            env={**self.env, **env},
            cwd=self.app,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _stop_everything(d: Deployment) -> None:
    for pid_file in sorted((d.app / "deploy").rglob("pids/*.pid")):
        try:
            deploy.stop_tree(int(pid_file.read_text()))
        except (OSError, ValueError):
            pass


def _census_app(dest: Path) -> Path:
    """The product's app with ``census_app`` as its ServerApp (the ClientApp unchanged)."""
    for package in PACKAGES:
        shutil.copytree(
            REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.so")
        )
    shutil.copy(Path(__file__).with_name("census_app.py"), dest / "census_app.py")
    shutil.copy(REPO / ".gitignore", dest / ".gitignore")
    pyproject = (REPO / "pyproject.toml").read_text()
    line = 'serverapp = "server.server_app:app"'
    assert line in pyproject, "pyproject.toml no longer names server.server_app:app"
    (dest / "pyproject.toml").write_text(pyproject.replace(line, 'serverapp = "census_app:app"'))
    return dest


def _wait_online(d: Deployment, timeout: float = 120) -> dict[str, dict[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = d.listing()
        if all(rows.get(s, {}).get("status") == "online" for s in SITES):
            return rows
        if time.monotonic() > deadline:
            raise TimeoutError(f"sites not online after {timeout} s: {rows}")
        time.sleep(2)


@pytest.fixture(scope="module", name="d")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("deployment")
    certs = root / "certs"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_dev_certs.py"), "--out", str(certs),
         "--supernodes", *SITES, "intruder"],
        check=True,
        timeout=60,
    )  # fmt: skip
    cohort = root / "cohort"
    _make_cohort(cohort)
    app = _census_app(root / "app")
    # The sites' own policy: DP-SGD as by default, with a lifetime budget that the tiny
    # cohort's few subjects do not exhaust in one run, and cells small enough that its ~8
    # training subjects are not suppressed to 0 (this module is about the deployment).
    (root / "policy.yaml").write_text("epsilon_budget: 100000.0\nmin_cell_size: 2\n")
    env = {
        **os.environ,
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_HOME": str(root / "flwr-home-unused"),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    env.pop("FLWR_TELEMETRY_ENABLED", None)  # the scripts' default (off) applies
    d = Deployment(
        root, app, certs, cohort, app / "deploy" / "coordinator",
        f"127.0.0.1:{_free_port()}", _free_port(), env,
    )  # fmt: skip
    try:
        d.coordinator("start", "--certs", str(certs), "--site-address", d.site_address,
                      "--control-port", str(d.control_port))  # fmt: skip
        for site in SITES:
            d.coordinator("register", site, str(certs / f"{site}.pub"))
            d.start_site(site)
        yield d
    finally:
        for site in ("intruder", *SITES):
            d.cmd("site", "stop", site, "--state", str(d.site_state(site)), check=False)
        d.cmd("coordinator", "stop", "--state", str(d.state), check=False)
        _stop_everything(d)


def test_unregistered_site_is_refused_with_a_message_that_says_why(d: Deployment) -> None:
    out = d.start_site("intruder", check=False)
    assert "refused this site's key" in out and "coordinator register intruder" in out, out
    log = (d.site_state("intruder") / "logs" / "intruder.log").read_text()
    assert "SuperNode ID" not in log, log  # it never got a node ID, so it never pulled messages
    superlink_log = (d.state / "logs" / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in superlink_log
    assert not (d.site_state("intruder") / "pids" / "intruder.pid").exists()
    assert set(_wait_online(d)) == set(SITES)  # the intruder was never added


def test_sites_are_listed_by_name_and_telemetry_is_off(d: Deployment) -> None:
    rows = _wait_online(d)
    assert sorted(rows) == list(SITES)
    assert all(int(r["node-id"]) > 1 for r in rows.values())
    for pid_file in (d.state / "pids").glob("*.pid"):
        environ = Path(f"/proc/{int(pid_file.read_text())}/environ").read_bytes().split(b"\0")
        assert b"FLWR_TELEMETRY_ENABLED=0" in environ, pid_file.name


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) that listen on ``port``."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:
                out.add(address)
    return out


def test_stranger_on_the_site_port_cannot_register_list_or_submit(d: Deployment) -> None:
    # Only the loopback address carries the SuperLink's port (Control API included).
    assert _listening(d.control_port) == {"0100007F"}
    stranger = d.root / "stranger-home"
    deploy.write_cli_config(stranger, d.site_address, d.certs / "ca.crt")
    register = d.flwr("supernode", "register", str(d.certs / "intruder.pub"), "g2i",
                      "--name", "intruder", home=stranger)  # fmt: skip
    assert register.returncode != 0 and "403" in register.stdout + register.stderr
    listing = d.flwr("ls", "g2i", home=stranger)
    assert listing.returncode != 0 and "403" in listing.stdout + listing.stderr
    run = d.flwr("run", str(d.app), "g2i", home=stranger)
    assert run.returncode != 0 and "403" in run.stdout + run.stderr
    assert set(d.listing()) == set(SITES)
    gateway_log = (d.state / "logs" / "gateway.log").read_text()
    assert '"POST /v1/control/register-node HTTP/1.1" 403' in gateway_log
    assert '"POST /v1/control/start-run HTTP/1.1" 403' in gateway_log


STATE_PREFIXES = ("deploy/", "certificates/", ".flwr", "runs/", "data/")


def _fab(app: Path) -> tuple[int, set[str]]:
    """(size, file names) of the bundle ``flwr run`` builds from ``app``."""
    from flwr.cli.build import build_fab_from_disk

    fab = build_fab_from_disk(app)
    names = set(zipfile.ZipFile(io.BytesIO(fab)).namelist())
    assert not [n for n in names if n.startswith(STATE_PREFIXES)], sorted(names)
    return len(fab), names


def _fab_size(app: Path) -> int:
    return _fab(app)[0]


def _census(d: Deployment, name: str, submit: bool = False) -> dict:
    """A census run, with ``flwr run --stream`` or (``submit``) ``deploy.py coordinator
    submit``, which returns at once."""
    run_dir = d.root / name
    overrides = f"data.root={d.cohort} run_dir={run_dir} federation.min_sites={len(SITES)}"
    run_config = f"experiment='tiny' overrides='{overrides}'"
    report = run_dir / "census.json"
    if submit:
        out = d.coordinator("submit", "--app", str(d.app), "--", "--run-config", run_config)
        assert "Successfully started run" in out and "flwr log" in out, out
        deadline = time.monotonic() + 300
        while not report.exists() and time.monotonic() < deadline:
            time.sleep(2)
        assert report.exists(), out
    else:
        proc = d.flwr("run", str(d.app), "g2i", "--stream", "--run-config", run_config)
        # `flwr run` exits 0 even when the run failed: check what the run left behind.
        assert proc.returncode == 0 and report.exists(), (proc.stdout + proc.stderr)[-4000:]
    return json.loads(report.read_text())


def test_census_runs_reach_both_sites_and_the_bundle_does_not_grow(d: Deployment) -> None:
    _wait_online(d)
    sizes = [_fab_size(d.app)]
    for k in range(CENSUS_RUNS):
        report = _census(d, f"census-{k}", submit=k == 0)
        assert report["failed"] == {}
        assert sorted(report["sites"]) == list(SITES)
        assert all(s["n-subjects"] == SUBJECTS_PER_SITE for s in report["sites"].values())
        sizes.append(_fab_size(d.app))
    # Each run installed app copies into the Flower homes under app/deploy/...
    installed = list((d.app / "deploy").rglob("pyproject.toml"))
    assert len(installed) >= len(SITES) + 1, installed
    # ... and .gitignore keeps them out of the next bundle.
    assert len(set(sizes)) == 1, sizes


def _run_ids(d: Deployment) -> set[str]:
    out = d.flwr("ls", "g2i", "--format", "json")
    assert out.returncode == 0, out.stdout + out.stderr
    return {str(r["run-id"]) for r in json.loads(out.stdout[out.stdout.index("{") :])["runs"]}


def test_superlink_restart_keeps_sites_and_runs(d: Deployment) -> None:
    runs_before = _run_ids(d)
    assert runs_before
    logs = {s: d.site_state(s) / "logs" / f"{s}.log" for s in SITES}
    offsets = {s: logs[s].stat().st_size for s in SITES}
    d.coordinator("stop")
    d.coordinator("start", "--certs", str(d.certs), "--site-address", d.site_address,
                  "--control-port", str(d.control_port))  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        tails = {s: logs[s].read_bytes()[offsets[s] :].decode(errors="replace") for s in SITES}
        if all("Connection successful" in t for t in tails.values()):
            break
        time.sleep(2)
    else:
        pytest.fail(f"sites did not reconnect after the restart: {tails}")
    assert sorted(_wait_online(d)) == list(SITES)  # same registrations, same names
    assert runs_before <= _run_ids(d)  # the run history survived
    report = _census(d, "census-after-restart")
    assert sorted(report["sites"]) == list(SITES) and report["failed"] == {}


def _kill_site_when_ldm_round_starts(d: Deployment, site: str, run_dir: Path, run) -> None:  # noqa: ANN001
    log = d.site_state(site) / "logs" / f"{site}.log"
    deadline = time.monotonic() + 900
    offset = None
    while time.monotonic() < deadline and run.poll() is None:
        state = run_dir / "state.json"
        if offset is None and state.exists() and "scale" in state.read_text():
            offset = log.stat().st_size  # the LDM phase comes next
        if offset is not None and "Receiving: train message" in log.read_bytes()[offset:].decode(
            errors="replace"
        ):
            time.sleep(1.0)  # let its ClientApp start on the round
            deploy.stop_tree(int((d.site_state(site) / "pids" / f"{site}.pid").read_text()), 1)
            return
        time.sleep(0.5)
    pytest.fail(f"the LDM round never reached {site} (run exited: {run.poll()})")


@pytest.mark.slow
def test_full_pipeline_names_the_site_killed_mid_ldm_round(d: Deployment) -> None:
    run_dir = d.root / "full-run"
    overrides = " ".join(
        [
            f"data.root={d.cohort}",
            f"run_dir={run_dir}",
            "federation.min_sites=1",  # site-0 carries on without site-1
            "data.image_size=32",
            "federation.rounds_ae=1",
            "federation.rounds_ldm=1",
            "train.max_steps_ae=2",
            "train.max_steps_ldm=2",
            "model.sample_steps=2",
            "federation.synthetic_per_class=1",
        ]
    )
    _wait_online(d)
    _, names_before = _fab(REPO)
    env = {**d.env, **deploy.flower_env(d.state / "flwr-cli")}
    with open(d.root / "full-run.log", "w") as out:
        run = subprocess.Popen(
            [str(BIN / "flwr"), "run", str(REPO), "g2i", "--stream",
             "--run-config", f"experiment='tiny' overrides='{overrides}'"],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _kill_site_when_ldm_round_starts(d, SITES[1], run_dir, run)
            run.wait(timeout=900)
        finally:
            if run.poll() is None:
                deploy.stop_tree(run.pid, 5)
    output = (d.root / "full-run.log").read_text()[-4000:]
    metrics_path = run_dir / "metrics.json"
    assert metrics_path.exists(), output
    metrics = json.loads(metrics_path.read_text())
    assert "1" not in metrics["failures"], metrics["failures"]
    assert list(metrics["failures"]) == [SITES[1]], metrics["failures"]
    assert metrics["failures"][SITES[1]][0].startswith("ldm round 1: "), metrics["failures"]
    assert SITES[1] not in metrics["last_round_site_metrics"]["ldm"]
    assert SITES[0] in metrics["last_round_site_metrics"]["ldm"]
    assert metrics["synthetic"]["shared_with"] == [SITES[0]]
    rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    ldm = [r for r in rounds if r["phase"] == "ldm"]
    assert ldm and SITES[1] in ldm[0]["failures"] and ldm[0]["round"] == 1
    # The run left nothing in the repository that the next bundle would carry. The size is
    # not compared (others may edit the sources meanwhile); run outputs would be JSON.
    size, names_after = _fab(REPO)
    assert not [n for n in names_after - names_before if n.endswith((".json", ".jsonl"))]
    assert size < 10 * 1024 * 1024
