#!/usr/bin/env python3
"""The local stack: a one-node Apache Kafka (KRaft) and a PostgreSQL cluster for this checkout.

    python3 deploy/local/stack.py start | stop | status | env
    python3 deploy/local/stack.py restart-kafka | restart-postgres [--down SECONDS]

Standard library only: it runs before the project's virtualenv exists. State lives in
`.sendout/` at the repository root; Kafka's jars are fetched from Maven Central once and cached
in `${XDG_CACHE_HOME:-~/.cache}/sendout/`, shared by every clone on the machine. `start` writes
`.sendout/stack.env` (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL). If those two variables are already
set in the environment, that component is not started and the given address is written through.
`stop` stops exactly the processes that `start` started, found by pid file, never by name.
`restart-kafka` / `restart-postgres` stop that component (Kafka by SIGTERM, PostgreSQL with
`pg_ctl -m fast`), keep it down for `--down` seconds (default 0), and start it again on the same
address — clients that reconnect find it where it was; if the port was taken meanwhile by
something else, it fails rather than move.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from base64 import urlsafe_b64encode
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STATE = ROOT / ".sendout"
POM = HERE / "kafka-pom.xml"
LOG4J = HERE / "log4j2.properties"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sendout"
KAFKA_DIR = STATE / "kafka"
KAFKA_PID = KAFKA_DIR / "kafka.pid"
PG_DIR = STATE / "pg"
ENV_FILE = STATE / "stack.env"
PORTS_FILE = STATE / "ports.json"
DATABASE = "sendout"
READY_TIMEOUT = 120.0


class StackError(Exception):
    pass


def log(msg: str) -> None:
    print(f"stack: {msg}", flush=True)


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload]


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


# --- ports ------------------------------------------------------------------------------------

def _free(port: int) -> bool:
    """Nobody listens on the port. Connections of an earlier run still in TIME_WAIT do not
    count: Kafka and PostgreSQL bind with SO_REUSEADDR, and so does this check (without it, a
    restart moved to a new port in 4 of 6 tries, and running clients lost the broker)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _new_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ports(names: list[str], running: set[str]) -> dict[str, int]:
    """Ports remembered from an earlier start (if still free, or ours), else new free ones."""
    known: dict[str, int] = json.loads(PORTS_FILE.read_text()) if PORTS_FILE.exists() else {}
    for name in names:
        if name not in known or (name not in running and not _free(known[name])):
            known[name] = _new_port()
    PORTS_FILE.write_text(json.dumps(known))
    return known


# --- Kafka ------------------------------------------------------------------------------------

def kafka_libs() -> Path:
    """Kafka's jars, copied from Maven Central once per pom version and cached."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    libs = CACHE / f"kafka-{digest}" / "libs"
    marker = libs.parent / ".complete"
    if marker.exists():
        return libs
    if not shutil.which("mvn"):
        raise StackError("Maven (mvn) is needed to fetch Kafka's jars; apt-get install maven")
    log(f"fetching Kafka jars from Maven Central (once; cached in {libs.parent})")
    shutil.rmtree(libs, ignore_errors=True)
    try:
        run(["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={libs}", "-DincludeScope=runtime"])
    except subprocess.CalledProcessError as exc:
        raise StackError(f"mvn could not fetch Kafka:\n{exc.stdout}\n{exc.stderr}") from exc
    marker.write_text("ok\n")
    return libs


def _kafka_request(port: int, api_key: int, version: int, body: bytes) -> bytes:
    """One raw Kafka request (header v1) and its response body, over a fresh connection."""
    client = b"sendout-stack"
    header = struct.pack(">hhih", api_key, version, 7, len(client)) + client
    payload = header + body
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(struct.pack(">i", len(payload)) + payload)
        size_raw = _recv(s, 4)
        data = _recv(s, struct.unpack(">i", size_raw)[0])
    if struct.unpack(">i", data[:4])[0] != 7:
        raise StackError("unexpected correlation id")
    return data[4:]


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def kafka_ready(port: int) -> bool:
    """The broker answers ApiVersions without error and Metadata lists at least one broker."""
    try:
        api = _kafka_request(port, 18, 0, b"")
        if struct.unpack(">h", api[:2])[0] != 0:
            return False
        # Metadata v4: all topics (null array), no auto-creation.
        meta = _kafka_request(port, 3, 4, struct.pack(">ib", -1, 0))
        _throttle, brokers = struct.unpack(">ii", meta[:8])
        return brokers > 0
    except (OSError, struct.error, StackError):
        return False


def _alive(pid: int, must_contain: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return must_contain in cmdline


def _kafka_pid() -> int | None:
    if not KAFKA_PID.exists():
        return None
    pid = int(KAFKA_PID.read_text())
    # The pid must still be our broker: its command line names this checkout's config.
    return pid if _alive(pid, str(KAFKA_DIR / "server.properties")) else None


def start_kafka(broker_port: int, controller_port: int) -> str:
    t0 = time.monotonic()
    bootstrap = f"127.0.0.1:{broker_port}"
    if _kafka_pid() and kafka_ready(broker_port):
        log(f"kafka already running on {bootstrap}")
        return bootstrap
    cached = (CACHE).exists() and any(CACHE.glob("kafka-*/.complete"))
    libs = kafka_libs()
    if not shutil.which("java"):
        raise StackError("Java is needed for Kafka; apt-get install openjdk-17-jre-headless")
    KAFKA_DIR.mkdir(parents=True, exist_ok=True)
    data = KAFKA_DIR / "data"
    props = KAFKA_DIR / "server.properties"
    props.write_text("\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{broker_port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={data}",
        "num.partitions=8",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=8",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "",
    ]))
    classpath = f"{libs}/*"
    java = ["java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={KAFKA_DIR}", f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp", classpath]
    if not (data / "meta.properties").exists():
        # Controller address changes are stored at format time: reformat from scratch.
        shutil.rmtree(data, ignore_errors=True)
        cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        try:
            run([*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
                 "--standalone"])
        except subprocess.CalledProcessError as exc:
            raise StackError(f"kafka storage format failed:\n{exc.stdout}\n{exc.stderr}") from exc
    out = (KAFKA_DIR / "kafka.out").open("ab")
    proc = subprocess.Popen([*java, "kafka.Kafka", str(props)], stdout=out, stderr=out,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    KAFKA_PID.write_text(str(proc.pid))
    deadline = time.monotonic() + READY_TIMEOUT
    while not kafka_ready(broker_port):
        if proc.poll() is not None:
            raise StackError(f"kafka exited with {proc.returncode}:\n"
                             f"{tail(KAFKA_DIR / 'kafka.out')}\n{tail(KAFKA_DIR / 'server.log')}")
        if time.monotonic() > deadline:
            raise StackError(f"kafka not ready after {READY_TIMEOUT}s:\n"
                             f"{tail(KAFKA_DIR / 'server.log')}")
        time.sleep(0.25)
    log(f"kafka ready on {bootstrap} in {time.monotonic() - t0:.1f}s"
        f" ({'jars cached' if cached else 'jars fetched'})")
    return bootstrap


def stop_kafka() -> None:
    pid = _kafka_pid()
    if pid is None:
        KAFKA_PID.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(pid, "kafka.Kafka") and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid, "kafka.Kafka"):
        os.kill(pid, signal.SIGKILL)
    KAFKA_PID.unlink(missing_ok=True)
    log(f"kafka stopped (pid {pid})")


# --- PostgreSQL -------------------------------------------------------------------------------

def pg_bindir() -> Path:
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        try:
            candidates.append(Path(run(["pg_config", "--bindir"]).stdout.strip()))
        except subprocess.CalledProcessError:
            pass
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                         key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                         reverse=True)
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)  # type: ignore[arg-type]
    for c in candidates:
        if (c / "initdb").exists() and (c / "pg_ctl").exists() and (c / "postgres").exists():
            return c
    return Path()


def ensure_pg_installed() -> Path:
    bindir = pg_bindir()
    if bindir != Path():
        return bindir
    log("no PostgreSQL server binaries found: installing Debian's postgresql package")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env)
    bindir = pg_bindir()
    if bindir == Path():
        raise StackError("PostgreSQL installed but initdb/pg_ctl/postgres not found")
    return bindir


def pg_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as an unprivileged system user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "sendout"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "sendout"], check=True)
    return "sendout"


def as_pg(user: str | None, cmd: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


def pg_data_dir(user: str | None) -> Path:
    """`.sendout/pg`, unless the pg user cannot reach it; then a folder in /tmp named after it."""
    if user is None or subprocess.run(as_pg(user, ["test", "-x", str(STATE)])).returncode == 0:
        return PG_DIR
    return Path("/tmp") / f"sendout-pg-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:10]}"


def start_postgres(port: int) -> str:
    t0 = time.monotonic()
    bindir = ensure_pg_installed()
    user = pg_user()
    base = pg_data_dir(user)
    data = base / "data"
    base.mkdir(parents=True, exist_ok=True)
    if user:
        shutil.chown(base, user)
        os.chmod(STATE, 0o755)
    url = f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"
    pg_ctl = str(bindir / "pg_ctl")
    if subprocess.run(as_pg(user, [pg_ctl, "-D", str(data), "status"]),
                      capture_output=True).returncode == 0:
        log(f"postgres already running on 127.0.0.1:{port}")
        return url
    try:
        if not (data / "PG_VERSION").exists():
            run(as_pg(user, [str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                             "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]))
        options = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=200 -c shared_buffers=256MB")
        run(as_pg(user, [pg_ctl, "-D", str(data), "-l", str(base / "pg.log"), "-w", "-t", "60",
                         "-o", options, "start"]))
        exists = run(as_pg(user, [str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port),
                                  "-U", "postgres", "-d", "postgres", "-tAc",
                                  f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"]))
        if exists.stdout.strip() != "1":
            run(as_pg(user, [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                             "-U", "postgres", DATABASE]))
    except subprocess.CalledProcessError as exc:
        raise StackError(f"postgres failed: {' '.join(exc.cmd)}\n{exc.stdout}\n{exc.stderr}\n"
                         f"{tail(base / 'pg.log')}") from exc
    (STATE / "pg.json").write_text(json.dumps({"data": str(data), "user": user,
                                               "pg_ctl": pg_ctl}))
    log(f"postgres ready on 127.0.0.1:{port} in {time.monotonic() - t0:.1f}s")
    return url


def _pg_running() -> bool:
    info_path = STATE / "pg.json"
    if not info_path.exists():
        return False
    info = json.loads(info_path.read_text())
    return subprocess.run(as_pg(info["user"], [info["pg_ctl"], "-D", info["data"], "status"]),
                          capture_output=True).returncode == 0


def stop_postgres() -> None:
    info_path = STATE / "pg.json"
    if not info_path.exists():
        return
    info = json.loads(info_path.read_text())
    result = subprocess.run(as_pg(info["user"], [info["pg_ctl"], "-D", info["data"], "-m", "fast",
                                                 "-w", "stop"]), capture_output=True, text=True)
    if result.returncode == 0:
        log("postgres stopped")


# --- restarts on the same address -------------------------------------------------------------

def _recorded_ports() -> dict[str, int]:
    if not PORTS_FILE.exists():
        raise StackError("no recorded ports: start the stack first")
    known: dict[str, int] = json.loads(PORTS_FILE.read_text())
    return known


def _wait_free(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not _free(port):
        if time.monotonic() > deadline:
            raise StackError(f"port {port} still taken {timeout}s after stopping; not moving")
        time.sleep(0.1)


def restart_kafka(down_seconds: float = 0.0) -> str:
    """Stop this checkout's broker and start it again on the same ports."""
    if _kafka_pid() is None:
        raise StackError("kafka is not running from this checkout (external or stopped)")
    p = _recorded_ports()
    stop_kafka()
    time.sleep(down_seconds)
    _wait_free(p["kafka"])
    _wait_free(p["kafka-controller"])
    return start_kafka(p["kafka"], p["kafka-controller"])


def restart_postgres(down_seconds: float = 0.0) -> str:
    """Stop this checkout's PostgreSQL (fast shutdown) and start it again on the same port."""
    if not _pg_running():
        raise StackError("postgres is not running from this checkout (external or stopped)")
    p = _recorded_ports()
    stop_postgres()
    time.sleep(down_seconds)
    _wait_free(p["postgres"])
    return start_postgres(p["postgres"])


# --- commands ---------------------------------------------------------------------------------

def start() -> None:
    t0 = time.monotonic()
    STATE.mkdir(exist_ok=True)
    kafka_env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    db_env = os.environ.get("DATABASE_URL")
    running = {"kafka", "kafka-controller"} if _kafka_pid() else set()
    if _pg_running():
        running.add("postgres")
    p = ports(["kafka", "kafka-controller", "postgres"], running)
    if kafka_env:
        log(f"kafka from KAFKA_BOOTSTRAP_SERVERS: {kafka_env}")
    if db_env:
        log("postgres from DATABASE_URL")
    kafka = kafka_env or start_kafka(p["kafka"], p["kafka-controller"])
    database = db_env or start_postgres(p["postgres"])
    ENV_FILE.write_text(f"KAFKA_BOOTSTRAP_SERVERS={kafka}\nDATABASE_URL={database}\n")
    log(f"stack ready in {time.monotonic() - t0:.1f}s; addresses in {ENV_FILE}")


def stop() -> None:
    stop_kafka()
    stop_postgres()
    ENV_FILE.unlink(missing_ok=True)


def status() -> int:
    pid = _kafka_pid()
    print(f"kafka: {f'running, pid {pid}' if pid else 'stopped'}")
    print(f"postgres: {'running' if _pg_running() else 'stopped'}")
    return 0 if ENV_FILE.exists() else 1


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    try:
        if command == "start":
            start()
        elif command == "stop":
            stop()
        elif command == "status":
            return status()
        elif command in ("restart-kafka", "restart-postgres"):
            down = float(argv[argv.index("--down") + 1]) if "--down" in argv else 0.0
            (restart_kafka if command == "restart-kafka" else restart_postgres)(down)
        elif command == "env":
            if not ENV_FILE.exists():
                print("stack not started", file=sys.stderr)
                return 1
            print(ENV_FILE.read_text(), end="")
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except StackError as exc:
        print(f"stack: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
