"""`ray up`, `ray exec` and `ray down` themselves, run as the README runs them, against a "node" on this machine:
Ray's `local` provider over an SSH server on loopback (Debian's openssh-server).

The node is a throw-away unprivileged user whose sshd runs in a PID namespace of its own: `ray down` (and
cluster.yaml's head start commands) run `ray stop` on the node, which ends every Ray process it can see; there it
sees only the node's. The node "image" is what an AMI gives: a Python (Debian's 3.11, with this environment's
packages on its path, so nothing is downloaded), tmux, and `hostname -I` answering the node's loopback address.

The cluster file is cluster.yaml with only what cannot apply here changed: the provider (`local`, the node's
address), the SSH user and key, no Docker, no apt-get of PostgreSQL and tmux (root on a cloud image; MLflow keeps
its runs in sqlite instead), and ports that another Ray on this machine may hold. Its file mounts, setup command
(`pip install .`), head start commands (`ray stop`, `ray start --num-cpus=0 ...`, the bucket check, MLflow's
server) and the README's `ray exec --tmux` command are the committed ones.

Outside the default suite (5 to 10 minutes on 2 loaded cores; needs root, sshd, rsync and tmux): MEDPEFT_RAY_UP_TEST=1.
"""

from __future__ import annotations

import contextlib
import copy
import getpass
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from bench.ray_processes import PATTERNS as RAY_PATTERNS
from tests.test_cluster_config import readme_commands_run_on_the_head, readme_ray_commands
from trainables.trainable import DRIVER_RESOURCE

REPO = Path(__file__).resolve().parents[1]
# A loopback address of the node's own: Ray's SSH has no port option, so its sshd takes port 22 there.
NODE_IP = "127.0.0.26"
NODE_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
BUCKET = "medpeft-loopback-bucket"
CLUSTER_NAME = f"medpeft-loopback-{os.getpid()}"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("MEDPEFT_RAY_UP_TEST") != "1",
                       reason="5 to 10 minutes, root, sshd: run with MEDPEFT_RAY_UP_TEST=1 (README, On a cluster)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def wait_until(condition, timeout: float, every: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False


def loopback_variant(user: str, key: Path, home: Path) -> dict:
    """cluster.yaml for the node on loopback: what cannot apply here replaced, the rest as committed."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    variant = copy.deepcopy(config)
    variant.pop("docker")  # no Docker here: the node's own Python runs Ray
    # The local provider has one node type of its own and refuses others: the head's resources come from its
    # `ray start`, which is what the committed command's --num-cpus=0 is for.
    variant.pop("available_node_types")
    variant.pop("head_node_type")
    variant["cluster_name"] = CLUSTER_NAME
    variant["provider"] = {"type": "local", "head_ip": NODE_IP, "worker_ips": []}
    variant["auth"] = {"ssh_user": user, "ssh_private_key": str(key)}
    variant["head_setup_commands"] = []
    ports = (f" --port={free_port()} --object-manager-port={free_port()} --node-ip-address={NODE_IP}"
             f" --dashboard-port={free_port()}"
             f" --dashboard-agent-listen-port={free_port()} --metrics-export-port={free_port()}")
    starts = []
    for command in config["head_start_ray_commands"]:
        if command.startswith("ray start"):
            command += ports  # click takes an option's last value
        command = command.replace("postgresql://mlflow:mlflow@127.0.0.1/mlflow", f"sqlite:///{home}/mlflow.db")
        starts.append(command)
    variant["head_start_ray_commands"] = starts
    return variant


class LoopbackNode:
    """A user, its home (the node's disk) and an sshd on NODE_IP:22 in a PID namespace of its own."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="rayup-", dir="/tmp"))
        self.base.chmod(0o755)  # the node's user reaches its home through it
        self.user = f"mpnode{os.getpid()}"
        self.home = self.base / "home"
        self.key = self.base / "client_key"
        self.sshd = None

    def start(self) -> None:
        subprocess.run(["useradd", "--no-create-home", "--home-dir", str(self.home), "--shell", "/bin/bash",
                        self.user], check=True)
        # Not locked ("*", no password can match): without PAM, sshd refuses any login to a locked account.
        subprocess.run(["usermod", "--password", "*", self.user], check=True)
        self.home.mkdir()
        (self.home / ".ssh").mkdir()
        (self.home / "bin").mkdir()
        for name in ("client_key", "host_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.base / name)], check=True)
        shutil.copy(self.key.with_suffix(".pub"), self.home / ".ssh" / "authorized_keys")
        # The node's Python: Debian's, in a virtual environment of the node's user that sees this environment's
        # packages (a path line in a .pth file), so `pip install .` finds every dependency installed.
        subprocess.run([str(NODE_PYTHON), "-m", "venv", "--without-pip", str(self.home / "venv")], check=True)
        node_site = subprocess.run([str(self.home / "venv/bin/python"), "-c",
                                    "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip()
        import site
        import sysconfig

        ours = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
        (Path(node_site) / "medpeft-dependencies.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
        # A cloud node answers `hostname -I` with its private address; this one's is NODE_IP. The image's `ray`
        # and `mlflow` commands (this environment's console scripts start a Python the node's user cannot reach).
        shims = {"hostname": f'[ "$1" = -I ] && {{ echo {NODE_IP}; exit 0; }}\nexec /bin/hostname "$@"',
                 "ray": 'exec python -m ray.scripts.scripts "$@"', "mlflow": 'exec python -m mlflow "$@"'}
        for name, body in shims.items():
            (self.home / "bin" / name).write_text(f"#!/bin/sh\n{body}\n")
            (self.home / "bin" / name).chmod(0o755)
        # What Ray's SSH commands run under (bash -i sources ~/.bashrc). Offline: pip builds with the setuptools
        # already installed and looks at no index. Ray's session files in a folder of the node's own.
        (self.home / ".bashrc").write_text(
            'export PATH="$HOME/bin:$HOME/venv/bin:$PATH"\n'
            f"export RAY_TMPDIR={self.base / 'ray'} RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled "
            "RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1\n"
            "export PIP_NO_INDEX=1 PIP_NO_BUILD_ISOLATION=0 PIP_DISABLE_PIP_VERSION_CHECK=1\n")
        (self.home / ".bash_profile").write_text(". ~/.bashrc\n")
        (self.base / "ray").mkdir()
        subprocess.run(["chown", "-R", f"{self.user}:", str(self.home), str(self.base / "ray")], check=True)
        (self.home / ".ssh").chmod(0o700)

        config = self.base / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {NODE_IP}", "Port 22", f"HostKey {self.base / 'host_key'}", f"PidFile {self.base / 'sshd.pid'}",
            "AuthorizedKeysFile .ssh/authorized_keys", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", f"AllowUsers {self.user}", "PermitRootLogin no", "StrictModes no", "X11Forwarding no",
            "MaxSessions 50", "MaxStartups 50", ""]))
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
        # --kill-child: when unshare goes, sshd (the namespace's init) goes, and with it every process of the node.
        self.sshd = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                                      "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                                     stdout=open(self.base / "sshd.log", "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                     start_new_session=True)
        if not wait_until(lambda: answers(NODE_IP, 22) or self.sshd.poll() is not None, 30) or self.sshd.poll():
            raise RuntimeError(f"sshd did not start:\n{(self.base / 'sshd.log').read_text()}")

    def user_processes(self) -> list[str]:
        try:
            uid = pwd.getpwnam(self.user).pw_uid
        except KeyError:
            return []
        out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "-U", str(uid)], capture_output=True, text=True)
        return out.stdout.splitlines()

    def stop(self) -> None:
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.send_signal(signal.SIGKILL)
            self.sshd.wait(30)
        wait_until(lambda: not self.user_processes(), 30, every=0.5)
        subprocess.run(["userdel", self.user], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)
        # The SSH connection sockets' folder Ray's launcher made for this cluster (command_runner.SSHCommandRunner).
        sha = lambda text: hashlib.sha256(text.encode()).hexdigest()[:10]  # noqa: E731
        controls = Path(f"/tmp/ray_ssh_{sha(getpass.getuser())}")
        shutil.rmtree(controls / sha(CLUSTER_NAME), ignore_errors=True)
        with contextlib.suppress(OSError):
            controls.rmdir()  # when no other cluster's are there


@pytest.fixture(scope="module")
def node():
    missing = [tool for tool in ("/usr/sbin/sshd", "rsync", "tmux", "unshare", "useradd", str(NODE_PYTHON))
               if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        pytest.skip(f"needs root and {missing or 'sshd, rsync, tmux'} (apt-get install openssh-server rsync tmux)")
    if answers(NODE_IP, 22):
        pytest.skip(f"something already listens on {NODE_IP}:22")
    node = LoopbackNode()
    try:
        node.start()
        yield node
    finally:
        node.stop()


def test_ray_up_exec_down_as_the_readme_runs_them(node, tmp_path):
    # A copy of the checkout (what is committed), as a user's laptop has it, with the user's cluster.env.
    checkout = tmp_path / "medpeft-sweep"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, checkout / name)
    (checkout / "cluster.env").write_text((REPO / "cluster.env.example").read_text()
                                          .replace("MEDPEFT_BUCKET=my-medpeft-bucket", f"MEDPEFT_BUCKET={BUCKET}"))
    variant = loopback_variant(node.user, node.key, node.home)
    (checkout / "cluster-loopback.yaml").write_text(yaml.safe_dump(variant, sort_keys=False))
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    # Where Ray's launcher keeps the local provider's cluster state (/tmp/ray by default, shared with every Ray).
    env["RAY_TMPDIR"] = str(node.base / "laptop")
    (node.base / "laptop").mkdir()

    def ray(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """A README `ray` command against the loopback variant of cluster.yaml."""
        args = [a if a != "cluster.yaml" else "cluster-loopback.yaml" for a in args]
        result = subprocess.run(["ray", *args], cwd=checkout, env=env, capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, f"ray {args}: exit {result.returncode}\n{result.stdout[-5000:]}\n" \
                                       f"{result.stderr[-5000:]}"
        return result

    readme = {args[1]: args for args in readme_ray_commands()}

    # ray up: the project synced, installed with `pip install .`, the head started as cluster.yaml starts it.
    ray(*readme["up"][1:], "--yes")
    node_venv = node.home / "venv"
    assert (node_venv / "bin" / "medpeft-sweep").exists()  # installed into the node's Python, not editable
    synced = {p.relative_to(checkout).as_posix() for p in checkout.rglob("*") if p.is_file()} - {"cluster.env"}
    on_node = {p.relative_to(node.home / "medpeft-sweep").as_posix()
               for p in (node.home / "medpeft-sweep").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert not synced - on_node, f"not synced to the head: {sorted(synced - on_node)[:10]}"
    assert (node.home / "medpeft.env").read_text() == (checkout / "cluster.env").read_text()
    # The head holds the driver resource and no CPU or GPU for trials, on this provider too.
    resources = json.loads(ray("exec", "cluster.yaml", "python -c 'import json, ray; ray.init(address=\"auto\"); "
                                                      "print(json.dumps(ray.cluster_resources()))' 2>/dev/null | "
                                                      "tail -1").stdout.strip().splitlines()[-1])
    assert resources.get("CPU", 0) == 0 and resources.get("GPU", 0) == 0, resources
    assert resources[DRIVER_RESOURCE] == 64, resources
    # The bucket reached the head through the mounted env file: MLflow's server runs with it, at the address the
    # README's command computes.
    assert wait_until(lambda: answers(NODE_IP, 5000), 180), (node.home / "mlflow.log").read_text()[-3000:]
    with urllib.request.urlopen(f"http://{NODE_IP}:5000/health", timeout=10) as reply:
        assert reply.status == 200
    servers = [line for line in node.user_processes() if "-m mlflow server" in line]  # the server, not its shell
    assert servers and all(re.search(rf"--artifacts-destination\s+s3://{BUCKET}/mlflow\b", s) for s in servers), \
        "\n".join(node.user_processes())

    # ray exec --tmux: the README's own command, in a tmux session on the head; here as a dry run of one arm (the
    # data, the weights and the bucket are not here), which prints the plan and what is missing.
    (command,) = readme_commands_run_on_the_head()
    ray("exec", "cluster.yaml", "--tmux", command + " --arm cnn --dry-run; echo medpeft-exit=$? bucket=$MEDPEFT_BUCKET")
    seen = {}

    def finished() -> bool:
        seen["pane"] = ray("exec", "cluster.yaml", "tmux capture-pane -p -J -S -2000").stdout
        return "medpeft-exit=" in seen["pane"]

    assert wait_until(finished, 400, every=10), seen.get("pane", "")[-4000:]
    pane = seen["pane"]
    assert "medpeft-exit=0" in pane, pane[-4000:]
    assert "Sweep 'paper-cnn' (classification)" in pane and "Missing" in pane, pane[-4000:]
    assert f"bucket={BUCKET}" in pane, pane[-4000:]  # what the command's $MEDPEFT_BUCKET was on the head

    # ray down: the node's Ray, its autoscaler and MLflow end. Its `ray stop` sees the node's processes only (its
    # own PID namespace, whose first process is its sshd, and an unprivileged user): no other Ray on this
    # machine is within its reach.
    init = ray("exec", "cluster.yaml", "echo init: $(ps -o args= -p 1)").stdout
    assert re.search(rf"^init: (sshd: )?/usr/sbin/sshd -D -e -f {node.base}/sshd_config", init, re.M), init
    assert [p for p in node.user_processes() if any(pattern in p for pattern in RAY_PATTERNS)]
    ray(*readme["down"][1:], "--yes")
    # The local provider leaves the machine on (AWS terminates it, MLflow's server with it): Ray is what ends.
    assert wait_until(lambda: not [p for p in node.user_processes() if any(pattern in p for pattern in RAY_PATTERNS)],
                      60), "\n".join(node.user_processes())
