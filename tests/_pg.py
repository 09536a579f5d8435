"""A real PostgreSQL server for the tests: ``$SAGA_TEST_POSTGRES`` (a URL) if
set, else a throwaway cluster from the server binaries on this machine
(``initdb`` and ``pg_ctl`` in a temporary directory, run as the ``postgres``
user when the tests run as root, on a Unix socket and a free TCP port, trust
auth), else None with the reason (the tests that need it skip with it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _binaries() -> Path | None:
    for d in [os.environ.get("SAGA_PG_BIN"), *sorted(Path("/usr/lib/postgresql").glob(
            "*/bin"), reverse=True)]:
        if d and (Path(d) / "initdb").exists():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A server of our own, stopped and removed by :meth:`stop`."""

    def __init__(self, also_on: str | None = None, own: bool = False) -> None:
        """`also_on`: an address (a veth's, see tests/_netns.py) the server
        listens on too, trusting its /24; `own`: never $SAGA_TEST_POSTGRES."""
        self.url: str | None = None
        self.why = ""
        self._dir: Path | None = None
        self._ctl: list[str] = []
        env = None if own else os.environ.get("SAGA_TEST_POSTGRES")
        if env:
            self.url = env
            return
        import importlib.util

        if importlib.util.find_spec("psycopg") is None:
            self.why = "psycopg is not installed (the 'postgres' extra)"
            return
        bindir = _binaries()
        if bindir is None:
            self.why = "no PostgreSQL server binaries (initdb) on this machine"
            return
        self._dir = Path(tempfile.mkdtemp(prefix="saga-pg-"))
        os.chmod(self._dir, 0o755)
        data, sock = self._dir / "data", self._dir / "sock"
        sock.mkdir()
        as_user: list[str] = []
        if os.getuid() == 0:  # initdb refuses root
            as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self._dir, "postgres")
            shutil.chown(sock, "postgres")
        port = _free_port()
        try:
            subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                            "-U", "postgres", "--no-sync"], check=True, capture_output=True,
                           timeout=120)
            self._ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
            listen = "127.0.0.1"
            if also_on:
                listen += "," + also_on
                net = also_on.rsplit(".", 1)[0] + ".0/24"
                with open(data / "pg_hba.conf", "a") as hba:
                    hba.write(f"host all all {net} trust\n")
            subprocess.run([*self._ctl, "-w", "-t", "60", "-l", str(self._dir / "log"),
                            "-o", f"-p {port} -k {sock} -c listen_addresses={listen} "
                            "-c fsync=off -c max_connections=200", "start"],
                           check=True, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            err = getattr(exc, "stderr", b"") or b""
            self.why = f"cannot start a PostgreSQL cluster: {exc} {err.decode()[-300:]}"
            self.stop()
            return
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def database(self, name: str) -> str:
        """A fresh database on the server: its URL."""
        import psycopg

        assert self.url is not None
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        base = self.url.rsplit("/", 1)[0]
        return f"{base}/{name}"

    def restart(self) -> None:
        """Restart the server (fast: connections are cut), as an operator would."""
        assert self._ctl, "only a cluster of our own can be restarted"
        assert self._dir is not None
        subprocess.run([*self._ctl, "-m", "fast", "-w", "-t", "60", "-l",
                        str(self._dir / "log"), "restart"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def stop(self) -> None:
        if self._ctl:
            subprocess.run([*self._ctl, "-m", "immediate", "-w", "stop"], capture_output=True,
                           timeout=60)
            self._ctl = []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
