"""The site's policy and the state it owns: what the server may ask, where the site reads and
writes, its lifetime privacy ledger and the log of what it released in each run.

A deployed SuperNode is started with ``--node-config 'data-path="/data/site-a"
policy-file="/etc/g2i/policy.yaml"'`` (the file holds ``conf.schema.SitePolicy`` fields;
without it the defaults apply: DP-SGD required, epsilon 10 over the site's lifetime, cells
of at least 10). The server's run config can then only override the allow-listed training
hyper-parameters, within the policy. A simulated node (a ``partition-id`` and no
``data-path``) takes its policy from the run's config: the person running the simulation is
every site at once.
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from conf.schema import PrivacyConfig, PrivacyMode, SitePolicy, check_config

EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9_]+$")


class PolicyRefusal(RuntimeError):
    """The site refuses a request its policy does not allow (the message says which)."""


class ReleaseRefused(PolicyRefusal):
    """The site already released this kind of result in this run (or over its lifetime)."""


@dataclass(frozen=True)
class SiteRuntime:
    """What a site owns, built from its node config; handlers receive it, the server cannot
    change it."""

    data_dir: Path
    work_root: str  # "" = beside the data
    policy: SitePolicy
    simulation: bool
    run_id: int

    @property
    def work_dir(self) -> Path:
        root = Path(self.work_root) if self.work_root else self.data_dir.parent / "prepared"
        return root / self.data_dir.name

    @property
    def releases(self) -> ReleaseLog:
        return ReleaseLog(self.work_dir / "releases.json")


def is_simulation(node_config: dict[str, Any]) -> bool:
    return "data-path" not in node_config and "partition-id" in node_config


def load_policy(node_config: dict[str, Any]) -> SitePolicy:
    """The deployed site's policy: ``policy-file`` (YAML of SitePolicy fields) or defaults."""
    path = str(node_config.get("policy-file", ""))
    base = OmegaConf.structured(SitePolicy)
    if not path:
        return OmegaConf.to_object(base)
    p = Path(path)
    if not p.is_file():
        raise PolicyRefusal(
            f"policy-file {p} does not exist; fix the SuperNode's --node-config policy-file"
        )
    return OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.load(p)))


def policy_from_config(cfg: DictConfig) -> SitePolicy:
    """A simulated site's policy: what the run's config asks for."""
    privacy, data = cfg.privacy, cfg.data
    mode = PrivacyMode(privacy.mode)
    return SitePolicy(
        privacy_mode=mode,
        min_noise_multiplier=float(privacy.noise_multiplier) if mode != PrivacyMode.none else 0,
        epsilon_budget=float(privacy.epsilon_budget),
        count_noise_multiplier=float(privacy.count_noise_multiplier),
        delta=float(privacy.delta),
        qc=OmegaConf.to_object(data.qc),
        val_fraction=float(data.val_fraction),
        test_fraction=float(data.test_fraction),
        split_seed=int(cfg.seed),
        audit_quantile=float(cfg.evaluation.audit_quantile),
        work_path=str(data.cache_dir),
        allowed_overrides=["*"],
    )


def parse_override(item: str) -> tuple[str, str]:
    """``key=value`` -> (key, value); refuses Hydra's add / delete / force prefixes."""
    if "=" not in item:
        raise PolicyRefusal(f"override {item!r} is not key=value")
    key, value = item.split("=", 1)
    if key[:1] in "+~":
        raise PolicyRefusal(
            f"override {item!r}: adding or deleting config keys is not allowed; set an "
            "existing key with key=value"
        )
    return key.strip(), value.strip()


def check_request(experiment: str, overrides: list[str], policy: SitePolicy | None) -> None:
    """Refuse what the policy does not allow: an experiment that is not a shipped preset,
    any interpolation, a key off the allow-list, a privacy setting below the policy
    (``policy`` None: a simulation, whose operator is every site; only the first two)."""
    from conf.loader import config_dir

    if not EXPERIMENT_NAME.match(experiment) or not (
        config_dir() / "experiment" / f"{experiment}.yaml"
    ).is_file():
        raise PolicyRefusal(
            f"experiment {experiment!r} is not one of the presets shipped in conf/experiment"
        )
    for item in overrides:
        if "${" in item:
            raise PolicyRefusal(
                "an override holds an interpolation (${...}); the site resolves none from the "
                "server: send literal values"
            )
        key, value = parse_override(item)
        if policy is None:
            continue
        if not any(fnmatch.fnmatchcase(key, pattern) for pattern in policy.allowed_overrides):
            raise PolicyRefusal(
                f"override {key!r} is not among the hyper-parameters this site lets the "
                f"server set ({', '.join(policy.allowed_overrides)})"
            )
        if key in ("privacy", "privacy.mode") and value != policy.privacy_mode:
            raise PolicyRefusal(
                f"{key}={value} refused: this site's policy requires privacy mode "
                f"{policy.privacy_mode}"
            )
        if key == "privacy.noise_multiplier" and _float(key, value) < policy.min_noise_multiplier:
            raise PolicyRefusal(
                f"privacy.noise_multiplier={value} refused: this site's policy requires at "
                f"least {policy.min_noise_multiplier}"
            )


def _float(key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError as exc:
        raise PolicyRefusal(f"{key} must be a number") from exc


def compose(
    run_config: dict[str, Any], node_config: dict[str, Any], run_id: int
) -> tuple[DictConfig, SiteRuntime]:
    """The run's config as this site accepts it, and the site's runtime."""
    from client.site import simulated_site_path, site_data_path
    from conf import load_config, parse_overrides, to_object

    experiment = str(run_config.get("experiment", "tiny"))
    overrides = parse_overrides(str(run_config.get("overrides", "")))
    simulation = is_simulation(node_config)
    if simulation:
        # The simulation's operator is every site: only what no site accepts is refused.
        check_request(experiment, overrides, None)
        cfg = _load(experiment, overrides, load_config)
        policy = policy_from_config(cfg)
    else:
        policy = load_policy(node_config)
        check_request(experiment, overrides, policy)
        cfg = _load(experiment, overrides, load_config)
    check_config(cfg)
    work = str(node_config.get("work-path", "") or policy.work_path)
    if simulation:
        data_dir = simulated_site_path(
            node_config, cfg.data.root, to_object(cfg.cohort), int(cfg.seed)
        )
        work = str(node_config.get("work-path", cfg.data.cache_dir))
    else:
        data_dir = site_data_path(node_config, cfg.data.root)
    return cfg, SiteRuntime(data_dir, work, policy, simulation, int(run_id))


def _load(experiment: str, overrides: list[str], load_config: Any) -> DictConfig:
    try:
        return load_config(experiment, overrides)
    except Exception as exc:  # Hydra's messages quote values; the site reports the kind only
        raise PolicyRefusal(
            f"the server's overrides do not compose ({type(exc).__name__}); check key names "
            "and value types"
        ) from exc


def site_privacy(requested: PrivacyConfig, runtime: SiteRuntime) -> PrivacyConfig:
    """The privacy settings a round trains with: the policy's mode, budget and delta, and at
    least its noise (the server may ask for more, and choose the clipping norm)."""
    if runtime.simulation:
        return requested
    p = runtime.policy
    return PrivacyConfig(
        mode=p.privacy_mode,
        noise_multiplier=max(float(requested.noise_multiplier), p.min_noise_multiplier),
        max_grad_norm=float(requested.max_grad_norm),
        delta=p.delta,
        target_epsilon=0.0,
        epsilon_budget=p.epsilon_budget,
        # What trains, the draws per example and the expected batch change the privacy
        # spent only through the accountant, which the budget above bounds.
        trainable=requested.trainable,
        augment_multiplicity=int(requested.augment_multiplicity),
        expected_batch_size=int(requested.expected_batch_size),
    )


class ReleaseLog:
    """What a site released, per Flower run, on the site's disk (a fresh process per
    message in deployment). ``claim`` refuses a second release of one kind in one run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.exists() else {"runs": {}}

    def _write(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        tmp.replace(self.path)

    def get(self, run_id: int, kind: str) -> Any:
        return self._read()["runs"].get(str(run_id), {}).get(kind)

    def check(self, run_id: int, kind: str) -> None:
        if self.get(run_id, kind) is not None:
            raise ReleaseRefused(
                f"{kind}: already released in this run; a site answers it once per run"
            )

    def record(self, run_id: int, kind: str, value: Any = True) -> None:
        state = self._read()
        state["runs"].setdefault(str(run_id), {})[kind] = value
        state.setdefault("lifetime", {})
        state["lifetime"][kind] = int(state["lifetime"].get(kind, 0)) + 1
        state.setdefault("times", []).append([time.time(), str(run_id), kind])
        self._write(state)

    def lifetime(self, kind: str) -> int:
        return int(self._read().get("lifetime", {}).get(kind, 0))
