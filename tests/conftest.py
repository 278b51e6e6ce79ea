"""Session-wide test settings, and real servers that tests in more than one folder use: a
certificate authority with server and client certificates (the `openssl` command) and a real
forward proxy (Debian's `tinyproxy`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hypothesis  # noqa: F401
import pytest

# hypothesis is imported here, at collection, on purpose: its pytest plugin imports it lazily
# at the terminal summary of a run that used no hypothesis test, deep in pluggy's call stack,
# where CPython 3.11.7's parser raises "AST constructor recursion depth mismatch" (a bug fixed
# in later 3.11 releases) while pytest rewrites it, and the run ends with a traceback.

# Some tests import litellm directly (as a client). Without these it would try to fetch its
# model cost map from the internet at import; the machines running the suite are offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")


# --- servers more than one test folder uses ---------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "1", "-subj", "/CN=tandem test CA", cwd=d)  # fmt: skip
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(extra + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return d


@dataclass
class Proxy:
    url: str
    log: Path

    def saw(self, port: int) -> bool:
        """Whether the proxy opened a connection to 127.0.0.1:port for a client."""
        return f"127.0.0.1:{port}" in self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """A real forward proxy (tinyproxy: plain HTTP requests and CONNECT tunnels)."""
    exe = shutil.which("tinyproxy") or ("/usr/bin/tinyproxy" if Path("/usr/bin/tinyproxy").exists() else None)
    if exe is None:
        pytest.fail("tinyproxy is missing: `bash deploy/bootstrap.sh --test` installs it")
    d = tmp_path_factory.mktemp("proxy")
    port = _free_port()
    log = d / "tinyproxy.log"
    (d / "tinyproxy.conf").write_text(
        f'Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile "{log}"\nLogLevel Info\n'
        "MaxClients 64\nAllow 127.0.0.1\n"
    )
    proc = subprocess.Popen([exe, "-d", "-c", str(d / "tinyproxy.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("tinyproxy did not start")
    yield Proxy(f"http://127.0.0.1:{port}", log)
    proc.terminate()
    proc.wait(5)
