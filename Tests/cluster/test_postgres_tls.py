"""Services reach PostgreSQL over TLS with libpq's sslmode semantics: verify-full checks the
chain and the host name; a server that accepts only TLS refuses plaintext."""

import os
import shutil
import subprocess
import tempfile

import pytest

from harness import ROOT, free_port


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=folder)


@pytest.fixture(scope="module")
def tls_postgres():
    if shutil.which("openssl") is None:
        subprocess.run(["apt-get", "install", "-y", "openssl"], check=True, capture_output=True)
    certs = tempfile.mkdtemp(prefix="parley-pg-tls-")
    os.chmod(certs, 0o755)  # the postgres OS user reads the server's key from here
    make_ca(certs, "ca")
    make_ca(certs, "other-ca")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost",
            "-keyout", "server.key", "-out", "server.csr", cwd=certs)
    with open(os.path.join(certs, "san.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "san.ext", "-out", "server.pem", cwd=certs)
    key = os.path.join(certs, "server.key")
    if os.getuid() == 0:
        shutil.chown(key, "postgres", "postgres")
    os.chmod(key, 0o600)
    data = tempfile.mkdtemp(prefix="parley-pg-tls-data-")
    port = free_port()
    env = dict(os.environ, PARLEY_PG_OPTIONS=f"-c ssl=on -c ssl_cert_file={certs}/server.pem -c ssl_key_file={key}")
    script = os.path.join(ROOT, "deploy", "local", "postgres.sh")
    admin = subprocess.run([script, "start", data, str(port)], env=env, check=True, capture_output=True, text=True).stdout.strip()
    # Only TLS from now on: plaintext TCP connections are rejected by pg_hba.
    hba = os.path.join(data, "pg_hba.conf")
    with open(hba) as f:
        rules = f.read()
    with open(hba, "w") as f:
        f.write("hostnossl all all all reject\nhostssl all all all trust\n" + rules)
    subprocess.run(["psql", f"{admin}?sslmode=require", "-qc", "SELECT pg_reload_conf()"], check=True, capture_output=True)
    yield port, certs
    subprocess.run([script, "stop", data], capture_output=True)
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(certs, ignore_errors=True)


def ctl(bin_dir, url, *args):
    env = {k: v for k, v in os.environ.items() if k != "PARLEY_DATABASE_URL"}
    return subprocess.run([f"{bin_dir}/parleyctl", *args, "--database-url", url], env=env, capture_output=True, text=True, timeout=60)


def test_verify_full_connects_and_everything_weaker_or_wrong_is_refused(bin_dir, tls_postgres):
    port, certs = tls_postgres
    ca = os.path.join(certs, "ca.pem")
    good = f"postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
    result = ctl(bin_dir, good, "db", "migrate")
    assert result.returncode == 0, result.stderr
    assert ctl(bin_dir, good, "nodes", "list").returncode == 0
    # libpq's weaker modes also work against a TLS server; verify-ca skips only the name.
    assert ctl(bin_dir, f"postgres://postgres@localhost:{port}/postgres?sslmode=require", "nodes", "list").returncode == 0
    assert ctl(bin_dir, f"postgres://postgres@localhost:{port}/postgres?sslmode=verify-ca&sslrootcert={ca}", "nodes", "list").returncode == 0
    refused = {
        # Plaintext: the server accepts TLS only.
        "plaintext": f"postgres://postgres@localhost:{port}/postgres?sslmode=disable",
        # A certificate from a CA we do not trust.
        "other CA": f"postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={certs}/other-ca.pem",
        # The right CA, but the certificate names localhost, not this address.
        "wrong name": f"postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={ca}",
    }
    for what, url in refused.items():
        result = ctl(bin_dir, url, "nodes", "list")
        assert result.returncode != 0, what
        assert "database error" in result.stderr, (what, result.stderr)
    # Bad settings are named, before any connection.
    for url, message in ((f"postgres://postgres@localhost:{port}/postgres?sslmode=sometimes", "sslmode must be one of"),
                         (f"postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={certs}/missing.pem",
                          "missing.pem is not a readable PEM"),
                         (f"postgres://postgres@localhost:{port}/postgres?sslcert=x", "unsupported parameters: sslcert")):
        result = ctl(bin_dir, url, "nodes", "list")
        assert result.returncode != 0 and message in result.stderr, result.stderr
