"""
stack.py - real services and the real fleetd binary for integration tests.

Mosquitto, Redis and PostgreSQL 15 run on free loopback ports inside one
temporary directory, with the settings scripts/dev-stack uses. Each is a
Service with start(), stop(), restart() and kill(), so fault tests can take
a dependency away and bring it back. Fleetd starts the binary with a
generated config and offers the HTTP, signal and log helpers the tests use.

Everything waits with a deadline; nothing here blocks forever.
Only the standard library and Debian's python3-* packages are used.
"""

import atexit
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("FLEETD_PG_BIN", "/usr/lib/postgresql/15/bin"))
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

# Lines in a log that fail the test that produced them.
SANITIZER_RE = re.compile(
    r"ERROR: AddressSanitizer|runtime error:|LeakSanitizer|"
    r"ERROR: ThreadSanitizer|ERROR: MemorySanitizer|WARNING: ThreadSanitizer")
CRASH_RE = re.compile(r"exited on signal (11|6|7|8|4)\b")
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS,
                 signal.SIGFPE, signal.SIGILL}


# ---------------------------------------------------------------- helpers

_ports_lock = threading.Lock()
_ports_given = set()


def free_port(host="127.0.0.1"):
    """A TCP port nobody listens on right now, never the same one twice
    in this session (so two fixtures cannot race for it)."""
    with _ports_lock:
        for _ in range(100):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((host, 0))
                port = s.getsockname()[1]
            finally:
                s.close()
            if port not in _ports_given:
                _ports_given.add(port)
                return port
    raise RuntimeError("no free port found")


def wait_until(fn, timeout, interval=0.05, what="condition"):
    """Call fn until it returns something true; return that value.
    Exceptions from fn count as "not yet". Raises TimeoutError with the
    last exception after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - "not yet"
            last = e
        if time.monotonic() >= deadline:
            raise TimeoutError("%s not reached after %.1fs%s" % (
                what, timeout, " (last error: %r)" % last if last else ""))
        time.sleep(interval)


def port_open(port, host="127.0.0.1", timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid):
    """True when pid is a live (not zombie) process."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat[stat.rindex(")") + 2]
    return state not in "ZXx"


def pid_stat(pid):
    """(ppid, pgrp, session) of pid, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[2]), int(fields[3])


def wait_pids_gone(pids, timeout):
    """Wait until none of pids is alive; return the ones still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if pid_alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def tail(text, n=60):
    lines = text.splitlines()
    return "\n".join(lines[-n:])


def read_file(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def http_request(host, port, method, path, body=None, headers=None,
                 timeout=5.0):
    """One request on a fresh connection. Returns (status, headers with
    lower-case names, body bytes)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        return resp.status, hdrs, data
    finally:
        conn.close()


class RawResponse:
    def __init__(self, version, status, reason, headers, body):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers        # lower-case name -> value
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<%s %d %r %r>" % (self.version, self.status, self.headers,
                                  self.body[:200])


def read_http_response(f, method="GET"):
    """Parse one HTTP/1.x response from a binary file object (a socket's
    makefile('rb')). Returns a RawResponse, or None on a clean EOF before
    any byte. Handles Content-Length, chunked and read-until-close."""
    line = f.readline(65536)
    if not line:
        return None
    m = re.match(rb"(HTTP/\d\.\d) (\d{3}) ?(.*)\r\n$", line)
    if not m:
        raise ValueError("bad status line %r" % line)
    version, status, reason = m.group(1).decode(), int(m.group(2)), m.group(3).decode()
    headers = {}
    while True:
        h = f.readline(65536)
        if not h:
            raise ValueError("EOF in headers")
        if h in (b"\r\n", b"\n"):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int(f.readline(1024).split(b";")[0].strip(), 16)
            if size == 0:
                while f.readline(65536) not in (b"\r\n", b"\n", b""):
                    pass
                break
            body += f.read(size)
            f.readline(1024)
    elif "content-length" in headers:
        n = int(headers["content-length"])
        body = f.read(n)
        if len(body) != n:
            raise ValueError("short body: %d of %d bytes" % (len(body), n))
    else:
        body = f.read()
    return RawResponse(version, status, reason, headers, body)


def parse_prometheus(text):
    """Parse Prometheus text format into {(name, frozenset(labels)): value}.
    Raises ValueError on a line that is not a comment, blank or sample."""
    samples = {}
    sample_re = re.compile(
        r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$')
    label_re = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = sample_re.match(line)
        if not m:
            raise ValueError("not a Prometheus sample: %r" % line)
        labels = {}
        if m.group(3):
            rest = m.group(3)
            pos = 0
            while pos < len(rest):
                lm = label_re.match(rest, pos)
                if not lm:
                    raise ValueError("bad labels in %r" % line)
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
        value = m.group(4)
        v = float(value.replace("+Inf", "inf").replace("-Inf", "-inf")
                  .replace("NaN", "nan"))
        samples[(m.group(1), frozenset(labels.items()))] = v
    return samples


# ------------------------------------------------------------- services

_live_services = set()


@atexit.register
def _kill_leftovers():
    for svc in list(_live_services):
        try:
            svc.kill()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


class Service:
    """A server process we own, in its own session, with its output in
    DIR/NAME.out. Subclasses set argv/ready()/user."""

    name = "service"
    host = "127.0.0.1"
    user = None
    group = None
    start_timeout = 20.0
    stop_signal = signal.SIGTERM

    def __init__(self, base_dir, port=None):
        self.dir = Path(base_dir) / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc = None
        self.out_path = self.dir / (self.name + ".out")
        self.starts = 0

    # -- to override
    def prepare(self):
        """Write config files; called before every start."""

    def argv(self):
        raise NotImplementedError

    def ready(self):
        raise NotImplementedError

    # -- common
    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        if self.running:
            return self
        self.prepare()
        out = open(self.out_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, cwd=str(self.dir),
                start_new_session=True, user=self.user, group=self.group,
                extra_groups=[] if self.user else None)
        finally:
            out.close()
        _live_services.add(self)
        self.starts += 1
        deadline = time.monotonic() + self.start_timeout
        last = None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s while starting:\n%s" % (
                    self.name, self.proc.returncode, tail(self.log_text())))
            try:
                if self.ready():
                    return self
            except Exception as e:  # noqa: BLE001 - not ready yet
                last = e
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError("%s not ready after %.0fs (%r):\n%s" % (
                    self.name, self.start_timeout, last,
                    tail(self.log_text())))
            time.sleep(0.05)

    def stop(self, timeout=20.0):
        """Orderly stop; SIGKILL to the whole group if it takes too long."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(self.stop_signal)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._killpg()
                self.proc.wait(5)
        self._reap_group()
        _live_services.discard(self)
        return self.proc.returncode

    def kill(self):
        """Crash it: SIGKILL to the process and everything in its group."""
        if not self.proc:
            return None
        self._killpg()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._reap_group()
        _live_services.discard(self)
        return self.proc.returncode

    def restart(self):
        self.stop()
        return self.start()

    def _killpg(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _group_pids(self):
        pgid = self.proc.pid
        pids = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                st = pid_stat(int(d))
                if st and st[1] == pgid and pid_alive(int(d)):
                    pids.append(int(d))
        return pids

    def _reap_group(self):
        # Children left in the group (postgres backends after a kill) must
        # be gone before a restart can reuse the data directory.
        left = wait_pids_gone(self._group_pids(), 5)
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_pids_gone(left, 5)

    def log_text(self):
        return read_file(self.out_path)

    def __repr__(self):
        return "<%s %s:%d pid=%s>" % (self.name, self.host, self.port, self.pid)


class Mosquitto(Service):
    name = "mosquitto"

    @property
    def uri(self):
        return "tcp://%s:%d" % (self.host, self.port)

    @property
    def conf_path(self):
        return self.dir / "mosquitto.conf"

    def prepare(self):
        # "user root" keeps the broker from switching to the mosquitto user,
        # which could not write into this directory.
        self.conf_path.write_text(
            "user root\n"
            "listener %d %s\n"
            "allow_anonymous true\n"
            "persistence true\n"
            "persistence_location %s/\n"
            "max_inflight_messages 1000\n"
            "max_queued_messages 1000000\n"
            "log_dest file %s\n"
            "log_timestamp_format %%Y-%%m-%%dT%%H:%%M:%%S\n"
            "pid_file %s\n" % (self.port, self.host, self.dir,
                               self.dir / "mosquitto.log",
                               self.dir / "mosquitto.pid"))

    def argv(self):
        return [MOSQUITTO, "-c", str(self.conf_path)]

    def ready(self):
        return port_open(self.port, self.host)

    def log_text(self):
        return read_file(self.out_path) + read_file(self.dir / "mosquitto.log")

    def client(self, client_id="", **kw):
        """A connected paho client with its network loop running."""
        import paho.mqtt.client as mqtt
        c = mqtt.Client(client_id=client_id, **kw)
        c.connect(self.host, self.port, keepalive=30)
        c.loop_start()
        return c


class Redis(Service):
    name = "redis"

    @property
    def conf_path(self):
        return self.dir / "redis.conf"

    def prepare(self):
        # Same as dev-stack except daemonize: here it is our child.
        self.conf_path.write_text(
            "bind %s\n"
            "port %d\n"
            "protected-mode no\n"
            "daemonize no\n"
            "pidfile %s\n"
            "logfile %s\n"
            "dir %s\n"
            "appendonly yes\n"
            "appendfsync everysec\n" % (self.host, self.port,
                                        self.dir / "redis.pid",
                                        self.dir / "redis.log", self.dir))

    def argv(self):
        return [REDIS_SERVER, str(self.conf_path)]

    def ready(self):
        return self.client(socket_timeout=1).ping()

    def log_text(self):
        return read_file(self.out_path) + read_file(self.dir / "redis.log")

    def client(self, **kw):
        import redis
        kw.setdefault("socket_timeout", 5)
        kw.setdefault("socket_connect_timeout", 2)
        return redis.Redis(host=self.host, port=self.port, **kw)


class Postgres(Service):
    """PostgreSQL 15 as user postgres; role and database fleetd, trust
    auth on loopback. stop() is a fast shutdown, kill() a crash."""

    name = "pg"
    user = "postgres"
    group = "postgres"
    stop_signal = signal.SIGINT          # fast shutdown
    start_timeout = 30.0
    dbname = "fleetd"
    dbuser = "fleetd"

    def __init__(self, base_dir, port=None):
        super().__init__(base_dir, port)
        self.data = self.dir / "data"
        self._created = False
        # The data directory must belong to postgres; the directory above
        # it must be reachable by postgres.
        shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o700)

    @property
    def conninfo(self):
        return "host=%s port=%d dbname=%s user=%s" % (
            self.host, self.port, self.dbname, self.dbuser)

    def prepare(self):
        if (self.data / "PG_VERSION").exists():
            return
        r = subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
             "-E", "UTF8", "--auth-local=trust", "--auth-host=trust",
             "--no-sync"],
            user="postgres", group="postgres", extra_groups=[],
            cwd=str(self.dir), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        if r.returncode != 0:
            raise RuntimeError("initdb failed:\n" + r.stdout.decode())

    def argv(self):
        # fsync off: tests kill the server process, never the machine.
        return [str(PG_BIN / "postgres"), "-D", str(self.data),
                "-c", "listen_addresses=%s" % self.host,
                "-c", "port=%d" % self.port,
                "-c", "unix_socket_directories=%s" % self.dir,
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
                "-c", "max_connections=200",
                "-c", "logging_collector=off"]

    def connect(self, dbname=None, user=None, autocommit=True):
        import psycopg2
        c = psycopg2.connect(host=self.host, port=self.port,
                             dbname=dbname or self.dbname,
                             user=user or self.dbuser, connect_timeout=2)
        c.autocommit = autocommit
        return c

    def ready(self):
        c = self.connect(dbname="postgres", user="postgres")
        try:
            if not self._created:
                cur = c.cursor()
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                            (self.dbuser,))
                if not cur.fetchone():
                    cur.execute("CREATE ROLE %s LOGIN" % self.dbuser)
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (self.dbname,))
                if not cur.fetchone():
                    cur.execute("CREATE DATABASE %s OWNER %s" % (
                        self.dbname, self.dbuser))
                self._created = True
            return True
        finally:
            c.close()


class Stack:
    """The three services in one temporary directory (reachable by the
    postgres user). Services start lazily: stack.mosquitto() etc."""

    def __init__(self, base_dir=None):
        root = os.environ.get("FLEETD_IT_TMP") or None
        self.dir = Path(base_dir or tempfile.mkdtemp(prefix="fleetd-it-", dir=root))
        os.chmod(self.dir, 0o755)
        self._svc = {}
        self._lock = threading.Lock()

    def _get(self, cls):
        with self._lock:
            svc = self._svc.get(cls.name)
            if svc is None:
                svc = self._svc[cls.name] = cls(self.dir)
            if not svc.running:
                svc.start()
            return svc

    def mosquitto(self):
        return self._get(Mosquitto)

    def redis(self):
        return self._get(Redis)

    def postgres(self):
        return self._get(Postgres)

    def close(self, keep=False):
        for svc in self._svc.values():
            try:
                svc.stop()
            except Exception:  # noqa: BLE001
                svc.kill()
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- fleetd

def fleetd_bin():
    b = os.environ.get("FLEETD_BIN") or "build/fleetd"
    p = Path(b)
    if not p.is_absolute():
        p = REPO / p
    return p


class DELETE:
    """Value for an extra-config dict key that removes it from the base."""


def deep_merge(base, extra):
    out = dict(base)
    for k, v in extra.items():
        if v is DELETE:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _scalar(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    return json.dumps(str(v))        # a JSON string is a YAML "..." scalar


def to_yaml(d, indent=0):
    """Block-style YAML for nested dicts; other values as flow scalars."""
    lines = []
    pad = "  " * indent
    for k, v in d.items():
        if isinstance(v, dict):
            if v:
                lines.append("%s%s:" % (pad, k))
                lines.append(to_yaml(v, indent + 1))
            else:
                lines.append("%s%s: {}" % (pad, k))
        else:
            lines.append("%s%s: %s" % (pad, k, _scalar(v)))
    return "\n".join(lines)


TOP_KEY_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)\s*:", re.M)


def render_config(base, extra):
    """base dict + extra (dict merged in, or YAML text whose top-level keys
    replace the base's) -> YAML text."""
    if extra is None:
        return to_yaml(base) + "\n"
    if isinstance(extra, dict):
        return to_yaml(deep_merge(base, extra)) + "\n"
    text = str(extra)
    keys = set(TOP_KEY_RE.findall(text))
    rest = {k: v for k, v in base.items() if k not in keys}
    return to_yaml(rest) + "\n" + text.rstrip("\n") + "\n"


class Fleetd:
    """One fleetd master (and its workers) started from a generated config.

    Attributes: url, host, port, pid (master), config_path, pid_file,
    log_file, dir, workers (expected count)."""

    def __init__(self, bin_path, work_dir, base_config, extra=None,
                 workers=2, env=None):
        self.bin = Path(bin_path)
        self.dir = Path(work_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.config_path = self.dir / "fleetd.yaml"
        self.pid_file = self.dir / "fleetd.pid"
        self.log_file = self.dir / "fleetd.log"
        self.stderr_path = self.dir / "fleetd.stderr"
        self.san_dir = self.dir / "sanitizer"
        self.san_dir.mkdir(exist_ok=True)
        self.base = deep_merge(base_config, {
            "workers": workers,
            "listen": "%s:%d" % (self.host, self.port),
            "pid_file": str(self.pid_file),
            "log": {"level": "info", "file": str(self.log_file)},
        })
        self.extra = extra
        self.env = dict(env or {})
        self.proc = None
        self.daemon = False
        self._daemon_pid = None
        self.seen_worker_pids = set()
        self.stop_timed_out = False
        self.write_config(extra)

    # -- config
    @property
    def workers(self):
        w = self.config_value("workers")
        if w == "auto" or w is None:
            return os.cpu_count()
        try:
            return int(w)
        except (TypeError, ValueError):
            return None

    def config_value(self, key):
        if isinstance(self.extra, dict) and key in self.extra:
            return self.extra[key]
        if isinstance(self.extra, str):
            m = re.search(r"^%s\s*:\s*(.+?)\s*$" % re.escape(key), self.extra, re.M)
            if m:
                return m.group(1).strip("\"'")
        return self.base.get(key)

    def write_config(self, extra=None, text=None):
        """Rewrite the config: base + extra, or exactly text."""
        if text is None:
            text = render_config(self.base, extra)
            self.extra = extra
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)
        return text

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    # -- process
    def _env(self):
        env = dict(os.environ)
        env.update(self.env)
        for var, extra in (("ASAN_OPTIONS", ""), ("UBSAN_OPTIONS", "print_stacktrace=1"),
                           ("LSAN_OPTIONS", "")):
            cur = env.get(var, "")
            if "log_path" not in cur:
                parts = [p for p in (cur, extra,
                                     "log_path=%s/%s" % (self.san_dir, var[:4].lower()))
                         if p]
                env[var] = ":".join(parts)
        return env

    def command(self, *args):
        return [str(self.bin), "-c", str(self.config_path)] + list(args)

    def cli(self, *args, timeout=15):
        """Run `fleetd -c CONFIG ARGS...` to completion (e.g. -s reload)."""
        return subprocess.run(self.command(*args), cwd=str(self.dir),
                              env=self._env(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, wait_ready=True, daemon=False, timeout=10.0, args=()):
        """Start the master (foreground child, or -d). With wait_ready,
        return once /healthz lists every worker as ready."""
        if not self.bin.exists():
            raise RuntimeError("fleetd binary %s not found (run make, or set "
                               "FLEETD_BIN)" % self.bin)
        self.daemon = daemon
        self._daemon_pid = None
        err = open(self.stderr_path, "ab")
        try:
            if daemon:
                r = subprocess.run(self.command("-d", *args), cwd=str(self.dir),
                                   env=self._env(), stdin=subprocess.DEVNULL,
                                   stdout=err, stderr=err, timeout=timeout)
                if r.returncode != 0:
                    raise RuntimeError("fleetd -d exited %d:\n%s" % (
                        r.returncode, tail(self.log_text())))
                self._daemon_pid = wait_until(self.read_pid_file, timeout,
                                              what="pid file after -d")
            else:
                self.proc = subprocess.Popen(
                    self.command(*args), cwd=str(self.dir), env=self._env(),
                    stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                    start_new_session=True)
        finally:
            err.close()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def read_pid_file(self):
        try:
            txt = self.pid_file.read_text().strip()
        except FileNotFoundError:
            return None
        return int(txt) if txt.isdigit() else None

    @property
    def pid(self):
        if self.daemon:
            return self._daemon_pid
        return self.proc.pid if self.proc else None

    def alive(self):
        if self.daemon:
            return self._daemon_pid is not None and pid_alive(self._daemon_pid)
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self):
        return None if self.daemon or not self.proc else self.proc.returncode

    def signal(self, sig):
        os.kill(self.pid, sig)

    def wait(self, timeout=10.0):
        """Wait for the master to exit; return its exit code (None for a
        daemon, which is not our child). Raises TimeoutError."""
        if self.daemon:
            if wait_pids_gone([self._daemon_pid], timeout):
                raise TimeoutError("fleetd daemon pid %d still alive after %.1fs"
                                   % (self._daemon_pid, timeout))
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError("fleetd pid %d still running after %.1fs"
                               % (self.proc.pid, timeout)) from None

    def wait_ready(self, timeout=10.0, generation_above=None):
        """Wait until /healthz is 200 and the current generation has every
        worker ready (and, if given, generation > generation_above)."""
        n = self.workers
        state = {}

        def ready():
            if not self.alive():
                raise RuntimeError("fleetd exited (%s) before ready:\n%s" % (
                    self.returncode, tail(self.log_text())))
            status, h = self.healthz_status(timeout=1.0)
            state["last"] = (status, h)
            if status != 200:
                return False
            gen = h.get("generation")
            if generation_above is not None and not (gen or 0) > generation_above:
                return False
            cur = [w for w in h.get("workers", [])
                   if w.get("generation", gen) == gen]
            if n is not None and len(cur) != n:
                return False
            return all(w.get("state") == "ready" for w in cur) and h

        deadline = time.monotonic() + timeout
        while True:
            try:
                h = ready()
                if h:
                    return h
            except RuntimeError:
                raise
            except Exception as e:  # noqa: BLE001 - not up yet
                state["err"] = e
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    "fleetd not ready after %.1fs; last /healthz %r, last error "
                    "%r\nlog:\n%s" % (timeout, state.get("last"),
                                      state.get("err"), tail(self.log_text())))
            time.sleep(0.05)

    def stop(self, timeout=10.0):
        """SIGTERM, wait, SIGKILL fallback (master and workers we saw).
        Returns the exit code (None for a daemon or a kill)."""
        rc = None
        if self.alive():
            try:
                self.signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                rc = self.wait(timeout)
            except TimeoutError:
                self.stop_timed_out = True
                self.kill_all()
                rc = None
        elif self.proc is not None and not self.daemon:
            rc = self.proc.returncode
        return rc

    def kill_all(self):
        """SIGKILL the master and every worker pid this object has seen
        that is still a fleetd process."""
        targets = set(self.seen_worker_pids)
        if self.pid:
            targets.add(self.pid)
        for p in targets:
            if pid_alive(p) and self._is_fleetd(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        wait_pids_gone(list(targets), 5)

    def _is_fleetd(self, pid):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmd = f.read()
        except FileNotFoundError:
            return False
        return str(self.config_path).encode() in cmd or self.bin.name.encode() in cmd

    # -- logs
    def sanitizer_text(self):
        out = []
        for p in sorted(self.san_dir.iterdir()):
            out.append("==> %s <==\n%s" % (p.name, read_file(p)))
        return "\n".join(out)

    def log_text(self):
        """log.file + the captured stderr + any sanitizer report files."""
        return "\n".join(t for t in (read_file(self.log_file),
                                     read_file(self.stderr_path),
                                     self.sanitizer_text()) if t)

    def problems(self):
        """Sanitizer reports and crash lines found in the logs."""
        found = []
        for line in self.log_text().splitlines():
            if SANITIZER_RE.search(line) or CRASH_RE.search(line):
                found.append(line)
        if not self.daemon and self.proc is not None and self.proc.returncode is not None:
            rc = self.proc.returncode
            if rc < 0 and -rc in CRASH_SIGNALS:
                found.append("master exited on signal %d" % -rc)
        return found

    # -- HTTP
    def request(self, method, path, body=None, headers=None, timeout=5.0):
        return http_request(self.host, self.port, method, path, body,
                            headers, timeout)

    def get(self, path, timeout=5.0):
        return self.request("GET", path, timeout=timeout)

    def healthz_status(self, timeout=5.0):
        """(HTTP status, parsed JSON) of GET /healthz."""
        status, hdrs, body = self.get("/healthz", timeout=timeout)
        h = json.loads(body)
        for w in h.get("workers", []) or []:
            if isinstance(w, dict) and isinstance(w.get("pid"), int):
                self.seen_worker_pids.add(w["pid"])
        return status, h

    def healthz(self, timeout=5.0):
        """Parsed JSON of GET /healthz (any status)."""
        return self.healthz_status(timeout)[1]

    def worker_pids(self, timeout=5.0):
        """Pids of the current generation's workers, by slot order."""
        h = self.healthz(timeout)
        gen = h.get("generation")
        ws = [w for w in h["workers"] if w.get("generation", gen) == gen]
        return [w["pid"] for w in sorted(ws, key=lambda w: w["slot"])]

    def metrics(self, timeout=5.0):
        status, hdrs, body = self.get("/metrics", timeout=timeout)
        if status != 200:
            raise AssertionError("/metrics returned %d: %r" % (status, body[:300]))
        return body.decode()

    def metric(self, name, timeout=5.0, **labels):
        """Value of one sample from /metrics, or None if absent."""
        samples = parse_prometheus(self.metrics(timeout))
        want = frozenset((k, str(v)) for k, v in labels.items())
        for (n, ls), v in samples.items():
            if n == name and want <= ls:
                return v
        return None

    def __repr__(self):
        return "<fleetd %s pid=%s>" % (self.url, self.pid)
