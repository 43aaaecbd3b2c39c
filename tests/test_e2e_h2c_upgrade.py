"""h2c via ``Upgrade: h2c`` for real: Apache httpd (mod_http2, ``Protocols h2c http/1.1``)
and curl --http2 on cleartext: each connection starts as HTTP/1.1, the server answers 101,
and the probe hands the connection to the HTTP/2 parser (protocol/http2/README.md).
The upgraded requests are http2 records on both sides, exact against Apache's access log;
HTTP/1.1 requests on the same port stay http records; the 101 is no record."""
import collections
import contextlib
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from tests.support.probe import ProbeRun
from tests.support.servers import free_port

START_TIMEOUT = 240       # s: BPF compile and load on a busy 2-core machine
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")

H2C = ["/index.html", "/missing", "/index.html", "/index.html", "/missing"]
H1 = ["/index.html", "/missing"]


@contextlib.contextmanager
def apache_h2c():
    d = tempfile.mkdtemp(prefix="l7probe-apache-")
    port = free_port()
    os.makedirs(os.path.join(d, "html"))
    with open(os.path.join(d, "html", "index.html"), "w") as f:
        f.write("hello\n")
    os.chmod(d, 0o755)
    conf = os.path.join(d, "httpd.conf")
    with open(conf, "w") as f:
        f.write("""# written by tests/test_e2e_h2c_upgrade.py
ServerRoot /usr/lib/apache2
PidFile {d}/httpd.pid
Listen 127.0.0.1:{port}
LoadModule mpm_event_module modules/mod_mpm_event.so
LoadModule authz_core_module modules/mod_authz_core.so
LoadModule dir_module modules/mod_dir.so
LoadModule mime_module modules/mod_mime.so
TypesConfig /etc/mime.types
LoadModule http2_module modules/mod_http2.so
User nobody
Group nogroup
ServerName localhost
ErrorLog {d}/error.log
LogFormat "%r %>s %H" simple
CustomLog {d}/access.log simple
DocumentRoot {d}/html
<Directory {d}/html>
    Require all granted
</Directory>
Protocols h2c http/1.1
H2Upgrade on
KeepAliveTimeout 2
""".format(d=d, port=port))
    proc = subprocess.Popen(["/usr/sbin/apache2", "-f", conf, "-DFOREGROUND"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if subprocess.run(["curl", "-s", "-o", "/dev/null", "http://127.0.0.1:%d/" % port,
                               "-A", "ready"]).returncode == 0:
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        yield port, d
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def run():
    with apache_h2c() as (port, d):
        with ProbeRun(["--proto", "http,http2", "-P", "600", "--sample", "0",
                       "--trace-limit", "1000000"], ready_timeout=START_TIMEOUT) as p:
            for path in H2C:
                v = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_version}",
                                    "--http2", "http://127.0.0.1:%d%s" % (port, path)],
                                   capture_output=True, text=True, timeout=30, check=True)
                assert v.stdout == "2", v.stdout          # upgraded
            for path in H1:
                subprocess.run(["curl", "-s", "-o", "/dev/null", "--http1.1",
                                "http://127.0.0.1:%d%s" % (port, path)], timeout=30, check=True)
            time.sleep(0.5)
            p.stop()
        with open(os.path.join(d, "access.log")) as f:
            log = [ln.split() for ln in f.read().splitlines()]
    yield {"probe": p, "port": str(port), "log": log}


def _api(probe, port, role, proto):
    c = collections.Counter()
    for r in probe.records("l7_rpc_api"):
        if r["server_port"] == port and r["l7_role"] == role and r["protocol"] == proto:
            c[r["api"]] += int(r["req_count"])
    return c


@pytest.mark.parametrize("role", ["server", "client"])
def test_upgraded_requests_are_http2_records(run, role):
    log = [ln for ln in run["log"] if ln[1] != "/"]       # not the readiness probe
    # Apache logs an upgraded request twice: its 101 (HTTP/1.1) and its answer (HTTP/2.0)
    h2 = collections.Counter("GET " + ln[1] for ln in log if ln[-1] == "HTTP/2.0")
    h1 = collections.Counter("GET " + ln[1] for ln in log
                             if ln[-1] == "HTTP/1.1" and ln[3] != "101")
    assert sum(ln[3] == "101" for ln in log) == len(H2C)
    assert sum(h2.values()) == len(H2C) and sum(h1.values()) == len(H1), log
    probe, port = run["probe"], run["port"]
    assert _api(probe, port, role, "http2") == h2
    assert _api(probe, port, role, "http") == h1
    statuses = collections.Counter(
        (r["protocol"], r["resp_code"]) for r in probe.records("l7_trace")
        if r["server_port"] == port and r["l7_role"] == role and r["req_path"] != "/")
    assert statuses == collections.Counter(
        {("http2", "200"): H2C.count("/index.html"), ("http2", "404"): H2C.count("/missing"),
         ("http", "200"): H1.count("/index.html"), ("http", "404"): H1.count("/missing")})
