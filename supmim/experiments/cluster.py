"""What each ``supmim sweep --launcher submitit`` job asks the cluster for: the
:class:`ClusterSettings` from ``--slurm-*`` flags over a ``--launcher-config`` YAML file, every
value checked (a one-line error naming the flag) before anything is submitted, and the
submitit executor built from them."""

from __future__ import annotations

import dataclasses
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supmim.errors import ConfigError

CLUSTERS = ("slurm", "local", "debug")


@dataclass
class ClusterSettings:
    """What each job asks the cluster for (validated by :func:`cluster_settings`)."""

    cluster: str = "slurm"  # slurm; local / debug: submitit's executors on this machine
    partition: str | None = None
    time: int = 60  # minutes per job
    gpus: int = 1
    cpus: int | None = None
    mem: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 32
    max_requeues: int = 5
    setup: list[str] = field(default_factory=list)  # shell lines run before each job


_INTS = {"gpus": 0, "cpus": 1, "array_parallelism": 1, "max_requeues": 0}  # name -> minimum
_NAMES = ("partition", "account", "qos", "constraint")


def parse_time(text: Any) -> int:
    """SLURM's time formats as whole minutes: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", str(text).strip())
    if m is not None:
        parts = [int(x) for x in m.group(2).split(":")]
        if m.group(1) is not None:  # D-H[:M[:S]]
            hours, minutes, seconds = (parts + [0, 0])[:3]
        elif len(parts) == 3:  # H:M:S
            hours, minutes, seconds = parts
        else:  # M[:S]
            hours, (minutes, seconds) = 0, (parts + [0])[:2]
        total = ((int(m.group(1) or 0) * 24 + hours) * 60 + minutes) * 60 + seconds
        if total > 0:
            return -(-total // 60)
    raise ConfigError(f"slurm time '{text}' is not a time limit; give minutes or "
                      "[D-]HH:MM:SS, e.g. --slurm-time 90 or --slurm-time 4:00:00")


def _setting(name: str, value: Any) -> Any:
    """One setting, checked and converted; ConfigError naming the flag and the fix."""
    flag = flag_name(name)
    if name == "cluster":
        if value not in CLUSTERS:
            raise ConfigError(f"submitit cluster '{value}': choose one of {', '.join(CLUSTERS)}")
        return value
    if name == "time":
        return parse_time(value)
    if name in _INTS:
        if isinstance(value, bool) or not re.fullmatch(r"\d+", str(value).strip()) \
                or int(value) < _INTS[name]:
            raise ConfigError(f"{flag} '{value}' must be a whole number >= {_INTS[name]}")
        return int(value)
    if name == "mem":
        m = re.fullmatch(r"([1-9]\d*)\s*([KMGT]?)B?", str(value).strip(), re.IGNORECASE)
        if m is None:
            raise ConfigError(f"{flag} '{value}' must be an amount like 32G, 500M or 1T")
        return m.group(1) + m.group(2).upper()  # no unit: megabytes, as in sbatch
    if name in _NAMES:
        if not isinstance(value, str) or not value.strip() or re.search(r"\s", value.strip()):
            raise ConfigError(f"{flag} '{value}' must be one word (a SLURM {name} name)")
        return value.strip()
    if name == "setup":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError("launcher config 'setup' must be a list of shell lines, e.g. "
                              "['module load cuda/12.4']")
        return list(value)
    keys = ", ".join(f.name for f in dataclasses.fields(ClusterSettings))
    raise ConfigError(f"unknown launcher setting '{name}'; known ones: {keys}")


def load_launcher_config(path: str | Path) -> dict[str, Any]:
    """A ``--launcher-config`` YAML file: a mapping of :class:`ClusterSettings` names
    (``array-parallelism`` and ``array_parallelism`` both work)."""
    import yaml
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--launcher-config '{file}' not found")
    try:
        values = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--launcher-config '{file}' is not valid YAML: "
                          f"{str(err).splitlines()[0]}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"--launcher-config '{file}' must be a mapping like "
                          "'partition: gpu' (one setting a line)")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def cluster_settings(file_values: dict[str, Any] | None = None,
                     flag_values: dict[str, Any] | None = None) -> ClusterSettings:
    """Defaults, then the YAML file's values, then the flags' (None = not given); every
    value checked before anything is submitted."""
    merged = {**(file_values or {}),
              **{k: v for k, v in (flag_values or {}).items() if v is not None}}
    return ClusterSettings(**{k: _setting(k, v) for k, v in merged.items()})


def executor_parameters(s: ClusterSettings, name: str) -> dict[str, Any]:
    """The ``AutoExecutor.update_parameters`` keywords of ``s`` (``slurm_*`` ones are
    ignored by submitit's local and debug executors)."""
    params: dict[str, Any] = {
        "name": name, "timeout_min": s.time, "gpus_per_node": s.gpus, "nodes": 1,
        "tasks_per_node": 1, "cpus_per_task": s.cpus,
        "slurm_partition": s.partition, "slurm_account": s.account, "slurm_qos": s.qos,
        "slurm_constraint": s.constraint, "slurm_mem": s.mem,
        "slurm_array_parallelism": s.array_parallelism,
        "slurm_setup": s.setup or None,
        "slurm_additional_parameters": {"requeue": True},  # SLURM may requeue it too
    }
    return {k: v for k, v in params.items() if v is not None}


def make_executor(s: ClusterSettings, folder: Path, name: str) -> Any:
    """submitit's AutoExecutor for ``s``, logging under ``folder/<job id>/``; submits
    nothing. A one-line error when submitit or SLURM is missing or a value is refused."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher submitit needs submitit: pip install "
                          "'supmim[cluster]'") from None
    if s.cluster == "slurm" and shutil.which("srun") is None:
        raise ConfigError("--launcher submitit found no SLURM here (no srun on PATH): run "
                          "the sweep on the cluster's login node, or use --launcher local")
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=s.cluster,
                                     slurm_max_num_timeout=s.max_requeues)
    try:
        executor.update_parameters(**executor_parameters(s, name))
    except (ValueError, NameError, AssertionError) as err:
        raise ConfigError(f"submitit refused the launcher settings: "
                          f"{str(err).splitlines()[0]}") from err
    return executor


def flag_name(name: str) -> str:
    """The command-line flag of setting ``name``: ``--slurm-NAME`` or ``--submitit-cluster``."""
    return "--submitit-cluster" if name == "cluster" else f"--slurm-{name.replace('_', '-')}"
