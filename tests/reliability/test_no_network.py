"""Issue 6, item 6: W&B selected, no network, no account: the run goes on offline and says where its files are.

Two guards: the whole ``train.py`` in a network namespace without any interface (``unshare -n``; W&B's own
service process included), where a blocking socket would hit the hard timeout; and, where namespaces are not
available (no root), an in-process run with every non-loopback connection and name lookup refused and
recorded, which must record none.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from reliability_helpers import ROOT, TINY_APP, train_py

from memcallback.app.train import run

RUN = ["logger=wandb", "trainer.max_steps=4", *TINY_APP]


def no_account_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user who never logged in to W&B and chose no W&B mode."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    home = tmp_path / "home"
    home.mkdir()
    return env | {"HOME": str(home), "WANDB_CONFIG_DIR": str(home / ".config" / "wandb")}


def can_unshare_network() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not can_unshare_network(), reason="needs `unshare -n` (root or user namespaces)")
def test_train_py_without_network_or_account_runs_offline(tmp_path) -> None:
    run_dir = tmp_path / "run"
    proc = train_py([*RUN, f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=240, env=no_account_env(tmp_path),
                    prefix=("unshare", "-n"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"W&B files +(\S+) +\(upload later: wandb sync", proc.stdout)
    assert match, proc.stdout
    wandb_dir = Path(match.group(1))
    assert wandb_dir.parent == run_dir / "wandb" and wandb_dir.name.startswith("offline-run-")
    assert list(wandb_dir.glob("run-*.wandb"))


def is_local(address: object) -> bool:
    """Unix sockets and loopback addresses (how the W&B SDK talks to its own service process)."""
    if not isinstance(address, tuple):
        return True
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def test_nothing_in_process_reaches_for_the_network(tmp_path, monkeypatch) -> None:
    attempts: list[str] = []
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def guarded_connect(self, address):
        if not is_local(address):
            attempts.append(f"connect {address}")
            raise OSError("network is unreachable (test)")
        return connect(self, address)

    def guarded_connect_ex(self, address):
        if not is_local(address):
            attempts.append(f"connect_ex {address}")
            return 101  # ENETUNREACH
        return connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not is_local((host,)):
            attempts.append(f"getaddrinfo {host}")
            raise socket.gaierror("name resolution disabled (test)")
        return getaddrinfo(host, *args, **kwargs)

    env = no_account_env(tmp_path)
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", env["HOME"])
    monkeypatch.setenv("WANDB_CONFIG_DIR", env["WANDB_CONFIG_DIR"])
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose("train", overrides=RUN)
    summary = run(cfg, output_dir=tmp_path / "run")
    assert summary["global_step"] == 4 and attempts == []
    wandb_dir = Path(summary["wandb_dir"])
    assert wandb_dir.parent == tmp_path / "run" / "wandb" and wandb_dir.name.startswith("offline-run-")
