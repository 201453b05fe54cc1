"""Start and stop a G2I-Fed deployment: one command per role, logs in files, state outside the app.

    python scripts/deploy.py coordinator start --certs certificates
    python scripts/deploy.py coordinator register site-0 certificates/site-0.pub
    python scripts/deploy.py coordinator list
    python scripts/deploy.py coordinator submit -- --run-config "experiment='fed_tiny' ..."
    python scripts/deploy.py coordinator stop
    python scripts/deploy.py site start site-0 --superlink coord.example.org:9092 \\
        --ca ca.crt --key site-0 --data-path /data/site-0 --work-path /data/work
    python scripts/deploy.py site stop site-0

``coordinator start`` runs ``flower-superlink`` on 127.0.0.1 (its one port serves the Fleet,
Control and Runtime APIs) with TLS, SuperNode authentication and a database file, and the
Fleet-only gateway (``fleet_gateway.py``) on the address the sites reach. Every process runs
in the background; the command prints where its log is and returns. State (Flower homes with
their installed app copies, the database, logs, pids, the flwr CLI's connection) lives in
``--state`` (default ``~/.local/state/g2i-fed``), outside the app folder that ``flwr run .``
packs. Flower telemetry is off unless ``FLWR_TELEMETRY_ENABLED`` is set in the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BIN = Path(sys.executable).parent
SCRIPTS = Path(__file__).resolve().parent
APP = SCRIPTS.parent
CONNECTION = "g2i"
DEFAULT_STATE = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "g2i-fed"


class DeployError(RuntimeError):
    """A deployment step failed; the message says what to do."""


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """The environment for Flower's executables: this venv first, telemetry off unless the
    caller's environment turns it on, no runtime dependency installation."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    if flwr_home is not None:
        flwr_home.mkdir(parents=True, exist_ok=True)
        env["FLWR_HOME"] = str(flwr_home)
    return env


def descendants(pid: int) -> list[int]:
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


def stop_tree(pid: int, timeout_s: float = 15.0) -> None:
    """SIGTERM ``pid`` and everything below it, then SIGKILL what is left after the timeout."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [pid, *descendants(pid)]
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)
        if not any(_alive(p) for p in pids):
            return


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class State:
    """The files of one role on this machine, under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        for sub in ("logs", "pids"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if self.root.is_relative_to(APP):
            print(
                f"warning: {self.root} is inside the app folder {APP}; keep deployment state "
                "outside it (or in a folder .gitignore names), or `flwr run .` packs it",
                file=sys.stderr,
            )

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.root / "pids" / f"{name}.pid"

    def home(self, name: str) -> Path:
        return self.root / f"flwr-{name}"

    @property
    def cli_home(self) -> Path:
        return self.root / "flwr-cli"

    @property
    def sites_file(self) -> Path:
        return self.root / "sites.json"

    def start(self, name: str, args: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
        """``args`` in the background, in its own session, output appended to its log."""
        pid_file = self.pid_file(name)
        if pid_file.exists() and _alive(int(pid_file.read_text())):
            raise DeployError(f"{name} is running already (pid {pid_file.read_text().strip()})")
        with open(self.log(name), "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(args)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(args),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pid_file.write_text(f"{proc.pid}\n")
        return proc

    def stop(self, name: str) -> bool:
        pid_file = self.pid_file(name)
        if not pid_file.exists():
            return False
        stop_tree(int(pid_file.read_text()))
        pid_file.unlink()
        return True


def wait_for_port(
    host: str, port: int, proc: subprocess.Popen, log: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeployError(f"exited during start-up (code {proc.returncode}); see {log}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise DeployError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s; see {log}")


def write_cli_config(home: Path, address: str, ca: Path) -> Path:
    """The flwr CLI's connection ``g2i`` to this SuperLink, in ``$FLWR_HOME/config.toml``."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{address}"\nroot-certificates = "{ca.resolve()}"\n'
    )
    return path


def flwr(state: State, *args: str, timeout_s: float = 120) -> str:
    """Run the flwr CLI against this coordinator's SuperLink; its stdout."""
    proc = subprocess.run(
        [str(BIN / "flwr"), *args],
        env=flower_env(state.cli_home),
        cwd=APP,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if proc.returncode != 0:
        raise DeployError(f"flwr {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def _json(text: str) -> dict:
    return json.loads(text[text.index("{") :])


# -- coordinator --------------------------------------------------------------------------


def coordinator_start(args: argparse.Namespace) -> None:
    state, certs = State(args.state), args.certs.resolve()
    tls = [str(certs / f) for f in ("ca.crt", "server.pem", "server.key")]
    missing = [f for f in tls if not Path(f).exists()]
    if missing:
        raise DeployError(f"missing {missing}: run scripts/make_dev_certs.py --out {certs}")
    ca, pem, key = tls
    control = f"127.0.0.1:{args.control_port}"
    superlink = state.start(
        "superlink",
        [
            str(BIN / "flower-superlink"),
            "--ssl-ca-certfile", ca, "--ssl-certfile", pem, "--ssl-keyfile", key,
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--database", str(state.root / "superlink.db"),
            "--host", "127.0.0.1", "--port", str(args.control_port),
        ],
        flower_env(state.home("superlink")),
    )  # fmt: skip
    wait_for_port("127.0.0.1", args.control_port, superlink, state.log("superlink"), 60)
    gateway = state.start(
        "gateway",
        [
            sys.executable, str(SCRIPTS / "fleet_gateway.py"),
            "--listen", args.site_address, "--superlink", control,
            "--certfile", pem, "--keyfile", key, "--ca", ca,
        ],
        flower_env(),
    )  # fmt: skip
    host, _, port = args.site_address.rpartition(":")
    probe = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host.strip("[]")
    wait_for_port(probe, int(port), gateway, state.log("gateway"), 60)
    config = write_cli_config(state.cli_home, control, Path(ca))
    print(
        f"SuperLink (Control, Runtime and Fleet APIs) on {control}, this host only; "
        f"pid {superlink.pid}, database {state.root / 'superlink.db'}\n"
        f"Sites connect to {args.site_address} (Fleet API only); pid {gateway.pid}\n"
        f"Logs: {state.log('superlink')} and {state.log('gateway')} "
        f"(follow with: tail -f {state.log('superlink')})\n"
        f"flwr CLI: export FLWR_HOME={state.cli_home}  (connection '{CONNECTION}' in {config})\n"
        f"Stop with: python {Path(__file__).name} coordinator stop --state {state.root}"
    )


def coordinator_stop(args: argparse.Namespace) -> None:
    state = State(args.state)
    for name in ("gateway", "superlink"):
        print(f"{name}: {'stopped' if state.stop(name) else 'not running'}")


def coordinator_register(args: argparse.Namespace) -> None:
    state = State(args.state)
    out = flwr(state, "supernode", "register", str(args.public_key.resolve()), CONNECTION,
               "--name", args.name, "--format", "json")  # fmt: skip
    node_id = int(_json(out)["node-id"])
    sites = json.loads(state.sites_file.read_text()) if state.sites_file.exists() else {}
    sites[str(node_id)] = args.name
    state.sites_file.write_text(json.dumps(sites, indent=2) + "\n")
    print(f"registered {args.name}: node ID {node_id}")


def site_table(state: State) -> list[dict[str, str]]:
    """Every SuperNode the SuperLink knows, with the site name it was registered under."""
    names = json.loads(state.sites_file.read_text()) if state.sites_file.exists() else {}
    nodes = _json(flwr(state, "supernode", "list", CONNECTION, "--format", "json"))["nodes"]
    return [
        {
            "site": names.get(str(n["node-id"]), "(not registered by this script)"),
            "node-id": str(n["node-id"]),
            "status": str(n["status"]),
        }
        for n in nodes
    ]


def coordinator_list(args: argparse.Namespace) -> None:
    rows = site_table(State(args.state))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'site':<24} {'node ID':<22} status")
    for row in rows:
        print(f"{row['site']:<24} {row['node-id']:<22} {row['status']}")


def coordinator_submit(args: argparse.Namespace) -> None:
    state = State(args.state)
    out = flwr(state, "run", str(args.app.resolve()), CONNECTION, *args.flwr_args)
    print(out.strip())
    print(
        f"The run goes on in the background. Follow it with: FLWR_HOME={state.cli_home} "
        f"flwr log <run-id> {CONNECTION}; list runs: FLWR_HOME={state.cli_home} flwr ls "
        f"{CONNECTION}. `flwr` reports success even when a run failed: check its run_dir "
        "for metrics.json."
    )


# -- site -----------------------------------------------------------------------------------


def site_start(args: argparse.Namespace) -> None:
    state = State(args.state)
    node_config = f'data-path="{args.data_path.resolve()}"'
    if args.work_path:
        node_config += f' work-path="{args.work_path.resolve()}"'
    if args.policy_file:  # the site's own limits (client/policy.py); defaults without it
        node_config += f' policy-file="{args.policy_file.resolve()}"'
    log = state.log(args.name)
    offset = log.stat().st_size if log.exists() else 0
    proc = state.start(
        args.name,
        [
            str(BIN / "flower-supernode"),
            "--superlink", args.superlink,
            "--root-certificates", str(args.ca.resolve()),
            "--auth-supernode-private-key", str(args.key.resolve()),
            "--node-config", node_config,
            "--host", "127.0.0.1", "--port", str(args.port),
        ],
        flower_env(state.home(args.name)),
    )  # fmt: skip
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        text = log.read_bytes()[offset:].decode(errors="replace")
        if "SuperNode ID" in text:
            print(f"{args.name}: connected to {args.superlink}, pid {proc.pid}")
            break
        if proc.poll() is not None:
            state.pid_file(args.name).unlink(missing_ok=True)
            if "Failed to activate SuperNode" in text or "401" in text:
                raise DeployError(
                    f"{args.name}: the SuperLink refused this site's key (exit code "
                    f"{proc.returncode}): the coordinator has not registered {args.key}.pub "
                    f"(python {Path(__file__).name} coordinator register {args.name} "
                    f"{args.name}.pub). See {log}"
                )
            raise DeployError(f"{args.name}: exited with code {proc.returncode}; see {log}")
        time.sleep(0.5)
    else:
        print(f"{args.name}: started (pid {proc.pid}), not connected after {args.wait:.0f} s")
    print(f"Log: {log} (follow with: tail -f {log})")
    print(f"Stop with: python {Path(__file__).name} site stop {args.name} --state {state.root}")


def site_stop(args: argparse.Namespace) -> None:
    print(f"{args.name}: {'stopped' if State(args.state).stop(args.name) else 'not running'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    roles = parser.add_subparsers(dest="role", required=True)

    def command(role: argparse._SubParsersAction, name: str, fn, help_: str):  # noqa: ANN001, ANN202
        p = role.add_parser(name, help=help_)
        p.add_argument("--state", type=Path, default=DEFAULT_STATE, help="state folder")
        p.set_defaults(fn=fn)
        return p

    coord = roles.add_parser("coordinator", help="the SuperLink host").add_subparsers(
        dest="command", required=True
    )
    p = command(coord, "start", coordinator_start, "start the SuperLink and the Fleet gateway")
    p.add_argument("--certs", type=Path, default=Path("certificates"))
    p.add_argument("--site-address", default="0.0.0.0:9092", help="HOST:PORT the sites reach")
    p.add_argument("--control-port", type=int, default=9093, help="127.0.0.1 port (all APIs)")
    command(coord, "stop", coordinator_stop, "stop the SuperLink and the gateway")
    p = command(coord, "register", coordinator_register, "accept a site's public key")
    p.add_argument("name")
    p.add_argument("public_key", type=Path)
    p = command(coord, "list", coordinator_list, "the SuperNodes, with site names")
    p.add_argument("--json", action="store_true")
    p = command(coord, "submit", coordinator_submit, "submit a run (returns at once)")
    p.add_argument("--app", type=Path, default=APP)
    p.add_argument("flwr_args", nargs=argparse.REMAINDER, help="after --: flwr run options")

    site = roles.add_parser("site", help="a hospital's SuperNode").add_subparsers(
        dest="command", required=True
    )
    p = command(site, "start", site_start, "start this site's SuperNode")
    p.add_argument("name")
    p.add_argument("--superlink", required=True, help="the coordinator's site address")
    p.add_argument("--ca", type=Path, required=True, help="the CA certificate (ca.crt)")
    p.add_argument("--key", type=Path, required=True, help="this site's private key")
    p.add_argument("--data-path", type=Path, required=True)
    p.add_argument("--work-path", type=Path)
    p.add_argument("--policy-file", type=Path, help="YAML of the site's policy (SitePolicy)")
    p.add_argument("--port", type=int, default=9094, help="local port for the ClientApp")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for connection")
    p = command(site, "stop", site_stop, "stop this site's SuperNode")
    p.add_argument("name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "flwr_args", None) and args.flwr_args[0] == "--":
        args.flwr_args = args.flwr_args[1:]
    try:
        args.fn(args)
    except DeployError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
