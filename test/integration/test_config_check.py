"""
`fleetd -c FILE -t`: validate a config the way a real start would (binds
included) and say `ok`, or `FILE:LINE: message` with exit 1.
"""

import re
import socket
import subprocess
import time

import pytest

import stack

GOOD_FULL = """\
node_id: node-7
workers: 2
listen: 127.0.0.1:{port}
backlog: 511
pid_file: {dir}/fleetd.pid
shutdown_timeout: 30s
fast_shutdown_timeout: 3s
worker_ready_timeout: 10s
log:
  level: warn
  file: ""
http:
  max_header_bytes: 16k
  max_body_bytes: 1m
  header_timeout: 10s
  idle_timeout: 2m
  drain_idle: 500ms
  max_connections: 10000
  max_output_bytes: 1048576
mqtt:
  uri: tcp://127.0.0.1:1883
  username: ""
  password: ""
  topics: ["devices/+/telemetry", "devices/+/state"]
  qos: 1
redis: {{ host: 127.0.0.1, port: 6379, password: "" }}
postgres:
  conninfo: "host=127.0.0.1 port=5432 dbname=fleetd user=fleetd"
  retention_days: 30
auth:
  admin_tokens: ["change-me", "other"]
limits:
  max_payload_bytes: 64k
  ws_send_buffer: 1m
"""

# (id, config text, line the error must be reported on)
BAD = [
    ("unknown_key",
     "listen: 127.0.0.1:{port}\nworkers: 2\nno_such_key: 1\n", 3),
    ("unknown_nested_key",
     "listen: 127.0.0.1:{port}\nhttp:\n  max_body_bytes: 1m\n  no_such_key: 5\n", 4),
    ("workers_wrong_type_quoted",
     "listen: 127.0.0.1:{port}\nworkers: \"lots\"\n", 2),
    ("workers_wrong_type",
     "listen: 127.0.0.1:{port}\nworkers: lots\n", 2),
    ("mapping_expected",
     "listen: 127.0.0.1:{port}\nworkers: 1\nhttp: 5\n", 3),
    ("list_expected",
     "listen: 127.0.0.1:{port}\nauth:\n  admin_tokens: {{a: 1}}\n", 3),
    ("workers_zero",
     "listen: 127.0.0.1:{port}\nworkers: 0\n", 2),
    ("workers_too_many",
     "listen: 127.0.0.1:{port}\nworkers: 65\n", 2),
    ("max_body_negative",
     "listen: 127.0.0.1:{port}\nworkers: 1\nhttp:\n  max_body_bytes: -1\n", 4),
    ("qos_out_of_range",
     "listen: 127.0.0.1:{port}\nmqtt:\n  qos: 2\n", 3),
    ("redis_port_out_of_range",
     "listen: 127.0.0.1:{port}\nredis:\n  port: 70000\n", 3),
    ("log_level_unknown",
     "listen: 127.0.0.1:{port}\nlog:\n  level: loud\n", 3),
    ("bad_duration",
     "listen: 127.0.0.1:{port}\nworkers: 1\nshutdown_timeout: 30 parsecs\n", 3),
    ("bad_duration_nested",
     "listen: 127.0.0.1:{port}\nhttp:\n  max_body_bytes: 1m\n  header_timeout: abc\n", 4),
    ("bad_size",
     "listen: 127.0.0.1:{port}\nhttp:\n  max_header_bytes: 16q\n", 3),
    ("listen_port_out_of_range",
     "workers: 1\nlisten: 127.0.0.1:99999\n", 2),
    ("yaml_bad_indent",
     "listen: 127.0.0.1:{port}\nworkers: 2\n  node_id: x\n", 3),
    ("yaml_tab",
     "listen: 127.0.0.1:{port}\nhttp:\n\tmax_body_bytes: 1m\n", 3),
    ("yaml_stray_bracket",
     "listen: 127.0.0.1:{port}\nworkers: 2\nnode_id: ]\n", 3),
    ("yaml_nested_colon",
     "listen: 127.0.0.1:{port}\nworkers: 2\nnode_id: a: b\n", 3),
    ("top_level_not_mapping",
     "- listen\n- workers\n", 1),
]


def check(fleetd_bin, path, cwd, timeout=10):
    """Run fleetd -c path -t; returns CompletedProcess (text)."""
    t0 = time.monotonic()
    r = subprocess.run([str(fleetd_bin), "-c", str(path), "-t"], cwd=str(cwd),
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout)
    r.elapsed = time.monotonic() - t0
    return r


def assert_error_at(r, path, line):
    assert r.returncode == 1, (
        "expected exit 1, got %d; stdout=%r stderr=%r"
        % (r.returncode, r.stdout, r.stderr))
    m = re.match(r"^(.*?):(\d+): ?\S", r.stderr)
    assert m, "stderr does not start with PATH:LINE: message: %r" % r.stderr
    assert m.group(1) == str(path), (
        "error names %r, expected %r: %r" % (m.group(1), str(path), r.stderr))
    assert int(m.group(2)) == line, (
        "error reported on line %s, expected line %d: %r"
        % (m.group(2), line, r.stderr))
    assert "ok" not in r.stdout.split(), "printed ok on a bad config: %r" % r.stdout


@pytest.mark.timeout(20)
def test_good_config_all_keys(fleetd_bin, tmp_path):
    port = stack.free_port()
    path = tmp_path / "good.yaml"
    path.write_text(GOOD_FULL.format(port=port, dir=tmp_path))
    r = check(fleetd_bin, path, tmp_path)
    assert r.returncode == 0, "exit %d, stderr=%r" % (r.returncode, r.stderr)
    assert r.stdout.strip() == "ok", "stdout=%r" % r.stdout
    # -t validates and leaves: nothing keeps running, no pid file, port free
    assert not (tmp_path / "fleetd.pid").exists(), "-t wrote the pid file"
    assert not stack.port_open(port), "-t left something listening on %d" % port


@pytest.mark.timeout(20)
@pytest.mark.parametrize("value", ["auto", 1, 64])
def test_good_workers_values(fleetd_bin, tmp_path, value):
    path = tmp_path / "w.yaml"
    path.write_text("listen: 127.0.0.1:%d\nworkers: %s\n" % (stack.free_port(), value))
    r = check(fleetd_bin, path, tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr


@pytest.mark.timeout(20)
@pytest.mark.parametrize("dur", ["500ms", "30s", "2m", "1h", "5"])
def test_good_durations(fleetd_bin, tmp_path, dur):
    path = tmp_path / "d.yaml"
    path.write_text("listen: 127.0.0.1:%d\nshutdown_timeout: %s\nhttp:\n"
                    "  idle_timeout: %s\n" % (stack.free_port(), dur, dur))
    r = check(fleetd_bin, path, tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr


@pytest.mark.timeout(20)
@pytest.mark.parametrize("size", ["16k", "1m", "4096"])
def test_good_sizes(fleetd_bin, tmp_path, size):
    path = tmp_path / "s.yaml"
    path.write_text("listen: 127.0.0.1:%d\nhttp:\n  max_header_bytes: %s\n"
                    "limits:\n  max_payload_bytes: %s\n" % (stack.free_port(), size, size))
    r = check(fleetd_bin, path, tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr


@pytest.mark.timeout(20)
def test_only_listen_is_valid(fleetd_bin, tmp_path):
    """Every other key has a default."""
    path = tmp_path / "min.yaml"
    path.write_text("listen: 127.0.0.1:%d\n" % stack.free_port())
    r = check(fleetd_bin, path, tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr


@pytest.mark.timeout(20)
def test_empty_file_is_valid(fleetd_bin, tmp_path):
    """All defaults, including listen 127.0.0.1:8080 - only checkable when
    that port is free here."""
    if stack.port_open(8080):
        pytest.skip("127.0.0.1:8080 is in use, the default listen cannot bind")
    path = tmp_path / "empty.yaml"
    path.write_text("")
    r = check(fleetd_bin, path, tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name,text,line", BAD, ids=[b[0] for b in BAD])
def test_bad_config(fleetd_bin, tmp_path, name, text, line):
    path = tmp_path / (name + ".yaml")
    path.write_text(text.format(port=stack.free_port()))
    r = check(fleetd_bin, path, tmp_path)
    assert_error_at(r, path, line)


@pytest.mark.timeout(20)
def test_listen_port_busy(fleetd_bin, tmp_path):
    """A port held by a plain (non-SO_REUSEPORT) listener cannot be bound:
    -t must fail on the listen line."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        path = tmp_path / "busy.yaml"
        path.write_text("workers: 1\nnode_id: busy\nlisten: 127.0.0.1:%d\n" % port)
        r = check(fleetd_bin, path, tmp_path)
        assert_error_at(r, path, 3)
    finally:
        holder.close()


@pytest.mark.timeout(20)
def test_missing_file(fleetd_bin, tmp_path):
    path = tmp_path / "nope.yaml"
    r = check(fleetd_bin, path, tmp_path)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert str(path) in r.stderr, r.stderr
