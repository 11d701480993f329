"""Redis access control: ACL users with password files, and TLS with a CA file."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Env, start_redis, stop_pid

REDIS_ERROR = 7
REDIS_UNAVAILABLE = 5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_certificates(folder: Path) -> None:
    """Write a CA (ca.pem), and a server and a client certificate signed by it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed; `make test` installs it")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=queuectl test CA",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/CN=queuectl",
    )
    run(
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "client.pem",
        "-days",
        "2",
    )


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[str]:
    """Start redis-server with TLS only, on a free loopback port; yield its URL."""
    folder = tmp_path / "tls"
    folder.mkdir()
    make_certificates(folder)
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.pem",
            "--tls-auth-clients",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.02)
    try:
        yield f"rediss://127.0.0.1:{port}/0"
    finally:
        stop_pid(process.pid)
        process.wait()


def test_acl_user_with_password_file(env: Env, tmp_path: Path) -> None:
    server = start_redis(
        tmp_path / "acl",
        "--user",
        "default",
        "off",
        "--user",
        "queuectl",
        "on",
        ">s3cret",
        # The ACL that docs/security.md recommends, for this test's namespace.
        "~{" + env.namespace + "}:*",
        "&{" + env.namespace + "}:*",
        "+@all",
        "-@dangerous",
        "+info",
        "--user",
        "reader",
        "on",
        ">r3ad",
        "~*",
        "&*",
        "+@read",
        "+ping",
    )
    password = tmp_path / "queuectl.pass"
    password.write_text("s3cret\n")
    reader_password = tmp_path / "reader.pass"
    reader_password.write_text("r3ad\n")
    try:
        env.write_config(
            redis={"url": server.url, "username": "queuectl", "password_file": str(password)}
        )
        worker = env.spawn("queuectl-worker", "--instance", "1")
        env.spawn("queuectl-scheduler")
        created = env.cli("enqueue", '{"id": "acl-job", "command": ["true"]}')
        delayed = env.cli("enqueue", '{"id": "acl-later", "command": ["true"], "delay": 0.3}')
        record = env.wait_for_state("acl-job", "completed")
        env.wait_for_state("acl-later", "completed")
        reaper = env.run("queuectl-reaper")
        env.write_config(redis={"namespace": "other"})
        outside = env.cli("enqueue", '{"id": "outside", "command": ["true"]}')
        env.write_config(
            redis={
                "namespace": env.namespace,
                "username": "reader",
                "password_file": str(reader_password),
            }
        )
        denied = env.cli("enqueue", '{"id": "denied", "command": ["true"]}')
        stop_pid(worker.pid)
    finally:
        stop_pid(server.pid)
        server.process.wait()

    assert created.returncode == 0, created.stderr
    assert delayed.returncode == 0, delayed.stderr
    assert record["attempts"] == 1
    assert reaper.returncode == 0, reaper.stderr
    assert outside.returncode == REDIS_ERROR
    assert "NOPERM" in outside.stderr or "no permissions" in outside.stderr
    assert denied.returncode == REDIS_ERROR
    assert "NOPERM" in denied.stderr or "no permissions" in denied.stderr
    assert "r3ad" not in denied.stderr


def test_tls_with_ca_file_runs_jobs(env: Env, tls_server: str, tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    env.write_config(
        redis={
            "url": tls_server,
            "tls_ca_file": str(folder / "ca.pem"),
            "tls_cert_file": str(folder / "client.pem"),
            "tls_key_file": str(folder / "client.key"),
        }
    )
    env.spawn("queuectl-worker", "--instance", "1")

    created = env.cli("enqueue", '{"id": "tls-job", "command": ["echo", "over tls"]}')
    record = env.wait_for_state("tls-job", "completed")

    assert created.returncode == 0, created.stderr
    assert env.store().get_output("tls-job")["stdout"] == "over tls\n"
    assert record["attempts"] == 1


def test_tls_without_ca_file_is_rejected(env: Env, tls_server: str) -> None:
    env.write_config(redis={"url": tls_server})

    result = env.cli("status")

    assert result.returncode == REDIS_UNAVAILABLE
    assert "certificate verify failed" in result.stderr
    assert "redis.tls_ca_file" in result.stderr
    assert tls_server in result.stderr


def test_systemd_credential_overrides_password_file(env: Env, tmp_path: Path) -> None:
    server = start_redis(tmp_path / "cred", "--requirepass", "fr0m-credential")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "redis-password").write_text("fr0m-credential\n")
    try:
        env.write_config(
            redis={
                "url": server.url,
                "password_file": str(tmp_path / "root-only.pass"),
                "password_credential": "redis-password",
            }
        )
        env.spawn(
            "queuectl-worker", "--instance", "1", env={"CREDENTIALS_DIRECTORY": str(credentials)}
        )
        without_credential = env.cli("status")
        (tmp_path / "root-only.pass").write_text("fr0m-credential\n")
        created = env.cli("enqueue", '{"id": "cred-job", "command": ["true"]}')
        record = env.wait_for_state("cred-job", "completed")
    finally:
        stop_pid(server.pid)
        server.process.wait()

    assert without_credential.returncode == 6
    assert "root-only.pass not found" in without_credential.stderr
    assert created.returncode == 0, created.stderr
    assert record["attempts"] == 1


def test_tls_without_client_certificate_fails(env: Env, tls_server: str, tmp_path: Path) -> None:
    env.write_config(redis={"url": tls_server, "tls_ca_file": str(tmp_path / "tls" / "ca.pem")})

    result = env.cli("status")

    assert result.returncode == REDIS_UNAVAILABLE
    assert tls_server in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="checks what a worker started as root does")
def test_worker_refuses_root_unless_allowed(env: Env) -> None:
    env.write_config(worker={"allow_root": False})

    daemon = env.run("queuectl-worker", "--instance", "1", timeout_s=30)
    detached = env.cli("worker", "start", "--count", "1")

    for result in (daemon, detached):
        assert result.returncode == 6, result.stderr
        assert "worker.allow_root = true" in result.stderr
    assert not env.run_dir.exists() or not list(env.run_dir.glob("*.pid"))
