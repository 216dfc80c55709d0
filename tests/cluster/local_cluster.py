"""A local cluster started by cluster/local/start.sh (token auth on, its own token file) for the
tests that use it, and what a test needs to look at one: its processes and their listening sockets."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = REPO_ROOT / "cluster" / "local"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines (with or without `export`, values maybe quoted) as a dict."""
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.removeprefix("export ").partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"')
    return values


def session_members(sids) -> set[int]:
    """Pids of every live process in the given sessions (a node's `ray start` and all it started)."""
    members = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) in sids:
                    members.add(int(entry))
            except OSError:  # gone meanwhile
                pass
    return members


def all_pids():
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:  # exited, or not ours to read
        pass
    return inodes


def _hex_address(text: str) -> str:
    """/proc/net/tcp's little-endian hex address -> "1.2.3.4" or an IPv6 string."""
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
    import ipaddress

    return str(ipaddress.IPv6Address(b"".join(words)))


def listening_sockets(pids) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket in LISTEN state that one of `pids` holds (read from
    /proc: no extra dependency)."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in owner:  # 0A: LISTEN
                host, port = local.split(":")
                found.append((_hex_address(host), int(port, 16), owner[inode]))
    return found


def is_loopback(address: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def start_cluster(*args: str) -> SimpleNamespace:
    """cluster/local/start.sh in a short temp dir (Ray's socket paths are length-capped), as a
    handle: .state, .gcs, .dashboard, .storage, .sids, .env (a client's environment), .stop()."""
    state = Path(tempfile.mkdtemp(prefix="cvr", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    proc = subprocess.run(["bash", str(SCRIPTS / "start.sh"), "-d", str(state), *args], env=env,
                          capture_output=True, text=True, timeout=400)
    handle = SimpleNamespace(state=state, start_output=proc.stdout + proc.stderr)

    def stop() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPTS / "stop.sh"), "-d", str(state)], capture_output=True,
                              text=True, timeout=200)

    handle.stop = stop
    if proc.returncode != 0:
        if (state / "cluster.env").exists():
            stop()
        raise RuntimeError(f"start.sh failed ({proc.returncode}):\n{handle.start_output[-3000:]}")
    recorded = read_env_file(state / "cluster.env")
    client = read_env_file(state / "env.sh")
    handle.gcs, handle.dashboard = recorded["GCS_ADDRESS"], recorded["DASHBOARD_URL"]
    handle.storage = Path(recorded["STORAGE"])
    handle.sids = {int(s) for s in recorded["PGIDS"].split()}
    handle.env = {**env, **client}
    return handle
