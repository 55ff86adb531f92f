"""
Fixtures for fleetd's integration tests.

Session scope: `stack` (temporary directory), `mosquitto`, `redis_server`,
`postgres` - real servers on free loopback ports (see stack.py; each has
host, port, start(), stop(), restart(), kill()), and `fleetd_bin`.

Function scope: `fleetd`, a factory:

    proc = fleetd({"http": {"header_timeout": "1s"}}, workers=2)
    proc.url, proc.port, proc.pid, proc.healthz(), proc.metrics(),
    proc.signal(signal.SIGHUP), proc.wait(5), proc.log_text(), proc.config_path

Its teardown stops every fleetd it started and fails the test when a log
holds a sanitizer report or a worker crash, or a worker outlived its master.

Environment: FLEETD_BIN (default build/fleetd), FLEETD_IT_KEEP=1 keeps the
services' directory, FLEETD_IT_TMP picks where it is created,
FLEETD_IT_TIMEOUT the default per-test limit in seconds (60).
"""

import os
import uuid
import signal
import sys

import pytest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import stack  # noqa: E402

ADMIN_TOKEN = "it-admin-token"
DEFAULT_TIMEOUT = float(os.environ.get("FLEETD_IT_TIMEOUT", "60"))


class TestTimeout(Exception):
    pass


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "timeout(seconds): time limit for the test body "
        "(default FLEETD_IT_TIMEOUT or 60)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """pytest-timeout is not available: a SIGALRM raises in the test body
    when it overruns, so fixtures still tear down."""
    m = item.get_closest_marker("timeout")
    secs = float(m.args[0]) if m else DEFAULT_TIMEOUT

    def on_alarm(signum, frame):
        raise TestTimeout("test exceeded its %.0f s time limit" % secs)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, secs)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="session")
def fleetd_bin():
    path = stack.fleetd_bin()
    if not os.access(path, os.X_OK):
        pytest.fail("fleetd binary %s not found or not executable "
                    "(run `make`, or set FLEETD_BIN)" % path, pytrace=False)
    return path


@pytest.fixture(scope="session")
def stack_dir():
    st = stack.Stack()
    yield st
    st.close(keep=bool(os.environ.get("FLEETD_IT_KEEP")))


@pytest.fixture(scope="session")
def mosquitto(stack_dir):
    return stack_dir.mosquitto()


@pytest.fixture(scope="session")
def redis_server(stack_dir):
    return stack_dir.redis()


@pytest.fixture(scope="session")
def postgres(stack_dir):
    return stack_dir.postgres()


def base_config(st):
    """The config every fleetd under test starts from: the services of
    `st` (restarted if a fault test left one down), short shutdown
    deadlines so tests stay quick."""
    mq, rd, pg = st.mosquitto(), st.redis(), st.postgres()
    return {
        "node_id": "it-node",
        "workers": 2,
        "shutdown_timeout": "5s",
        "fast_shutdown_timeout": "3s",
        "worker_ready_timeout": "10s",
        # a share group of its own: sessions that other tests' workers left
        # in a group on the shared broker keep taking a share of its
        # messages (see the retired-slot note in test_ingest_faults.py)
        "mqtt": {"uri": mq.uri,
                 "share_group": "it-" + uuid.uuid4().hex[:10]},
        "redis": {"host": rd.host, "port": rd.port},
        "postgres": {"conninfo": pg.conninfo},
        "auth": {"admin_tokens": [ADMIN_TOKEN]},
    }


@pytest.fixture
def fleetd(fleetd_bin, stack_dir, tmp_path):
    """Factory: fleetd(extra=None, workers=2, start=True, daemon=False,
    wait_ready=True, timeout=10, env=None, args=()) -> stack.Fleetd.

    extra is a dict deep-merged into the base config, or YAML text whose
    top-level keys replace the base's."""
    started = []

    def make(extra=None, workers=2, start=True, daemon=False,
             wait_ready=True, timeout=10.0, env=None, args=()):
        f = stack.Fleetd(fleetd_bin, tmp_path / ("fleetd%d" % len(started)),
                         base_config(stack_dir), extra=extra,
                         workers=workers, env=env)
        started.append(f)
        if start:
            f.start(wait_ready=wait_ready, daemon=daemon, timeout=timeout,
                    args=args)
        return f

    yield make

    problems = []
    for f in started:
        was_alive = f.alive()
        rc = f.stop(timeout=10)
        if f.stop_timed_out:
            problems.append("%r: master still running 10 s after SIGTERM "
                            "(killed)" % f)
        elif was_alive and rc not in (0, None):
            problems.append("%r: master exited %r after SIGTERM" % (f, rc))
        left = stack.wait_pids_gone(
            [p for p in f.seen_worker_pids if f._is_fleetd(p)], 3)
        if left:
            problems.append("%r: worker pid(s) %s still alive after the "
                            "master exited" % (f, left))
            f.kill_all()
        found = f.problems()
        if found:
            problems.append("%r: crash or sanitizer report in the log:\n  %s\n"
                            "--- log tail ---\n%s" % (
                                f, "\n  ".join(found[:20]),
                                stack.tail(f.log_text(), 80)))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
