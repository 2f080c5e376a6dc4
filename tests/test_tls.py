"""TLS for grpc+https: a throwaway PKI, our server with and without client certificates, the
client library and the `castore` command on both ends.

Certificates are made per session by the `openssl` command line tool: a CA for the server, a
second CA for client certificates, and an unrelated CA that trusts nothing of ours. Every
failure must be a prompt, clear error (Unavailable naming the TLS problem, or one line from
the command), never a hang.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from castore_client.address import Address, parse_address
from castore_client.chunked_reader import open_blob
from castore_client.connect import open_services
from castore_client.digest import B3Digest
from castore_client.errors import Unavailable
from castore_client.rpc.server import CastoreServer
from castore_client.services import Services
from castore_client.stores import open_memory_store
from castore_client.tls import (
    InvalidTlsConfig,
    ServerTlsOptions,
    TlsOptions,
    pem_labels,
    read_pem,
)

from . import fixtures as fx
from .conftest import require_tool
from .fuse_harness import (
    BLOB_A_NAME,
    HELLOWORLD_NAME,
    REPO_ROOT,
    mounted,
    populate_fixtures,
    require_fuse,
)

CONNECT_TIMEOUT = 1.0
# A refused handshake must end well before this; the deadline only keeps a bug from hanging.
PROMPT = 15.0


# --------------------------------------------------------------------------------------------
# A throwaway PKI


@dataclasses.dataclass(frozen=True)
class Pki:
    dir: pathlib.Path
    ca: pathlib.Path  # signs the server certificates
    client_ca: pathlib.Path  # signs client.pem
    other_ca: pathlib.Path  # signs other_client.pem; trusts nothing of ours
    server_cert: pathlib.Path  # 127.0.0.1 and localhost
    server_key: pathlib.Path
    misnamed_cert: pathlib.Path  # signed by `ca`, for elsewhere.example only
    misnamed_key: pathlib.Path
    client_cert: pathlib.Path
    client_key: pathlib.Path
    other_client_cert: pathlib.Path
    other_client_key: pathlib.Path

    def read(self, path: pathlib.Path) -> bytes:
        return path.read_bytes()

    def server_tls(self, *, client_ca: bool = False) -> ServerTlsOptions:
        return ServerTlsOptions(
            certificate_chain=self.server_cert.read_bytes(),
            private_key=self.server_key.read_bytes(),
            client_ca=self.client_ca.read_bytes() if client_ca else None,
        )

    def client_tls(self, *, ca: pathlib.Path | None = None, cert: bool = False) -> TlsOptions:
        return TlsOptions(
            root_certificates=(ca or self.ca).read_bytes(),
            certificate_chain=self.client_cert.read_bytes() if cert else None,
            private_key=self.client_key.read_bytes() if cert else None,
        )


def _openssl(openssl: str, *args: str, cwd: pathlib.Path) -> None:
    result = subprocess.run(
        [openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def _make_ca(openssl: str, d: pathlib.Path, name: str) -> None:
    _openssl(
        openssl,
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN=castore test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def _make_leaf(openssl: str, d: pathlib.Path, name: str, ca: str, extensions: str) -> None:
    _openssl(
        openssl,
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=castore test {name}",
        cwd=d,
    )  # fmt: skip
    (d / f"{name}.ext").write_text(extensions)
    _openssl(
        openssl,
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    openssl = require_tool("openssl")
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "client_ca", "other_ca"):
        _make_ca(openssl, d, ca)
    server = "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    client = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
    _make_leaf(openssl, d, "server", "ca", server + "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _make_leaf(openssl, d, "misnamed", "ca", server + "subjectAltName=DNS:elsewhere.example\n")
    _make_leaf(openssl, d, "client", "client_ca", client)
    _make_leaf(openssl, d, "other_client", "other_ca", client)
    return Pki(
        dir=d,
        ca=d / "ca.pem",
        client_ca=d / "client_ca.pem",
        other_ca=d / "other_ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        misnamed_cert=d / "misnamed.pem",
        misnamed_key=d / "misnamed.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        other_client_cert=d / "other_client.pem",
        other_client_key=d / "other_client.key",
    )


# --------------------------------------------------------------------------------------------
# Servers


HTTPS_LISTEN = parse_address("grpc+https://127.0.0.1:0")


@pytest.fixture
def store() -> Iterator[Services]:
    with open_memory_store() as s:
        populate_fixtures(s)
        yield s


@pytest.fixture
def tls_server(store: Services, pki: Pki) -> Iterator[CastoreServer]:
    """Server authentication only."""
    with CastoreServer(store, HTTPS_LISTEN, tls=pki.server_tls()) as server:
        yield server


@pytest.fixture
def mtls_server(store: Services, pki: Pki) -> Iterator[CastoreServer]:
    """Requires a client certificate signed by the client CA."""
    with CastoreServer(store, HTTPS_LISTEN, tls=pki.server_tls(client_ca=True)) as server:
        yield server


def round_trip(address: Address | str, tls: TlsOptions | None, *, fixtures: bool = True) -> None:
    """Connect, upload a blob and read it back; list the PathInfos of a fixture store."""
    with open_services(address, timeout=10, connect_timeout=CONNECT_TIMEOUT, tls=tls) as client:
        digest = client.blobs.put([fx.BLOB_B])
        assert digest.raw == fx.b3(fx.BLOB_B)
        reader = open_blob(client.blobs, digest)
        assert reader.read_at(0, len(fx.BLOB_B)) == fx.BLOB_B
        reader.close()
        names = {info.node.name for info in client.path_infos.list() if info.node is not None}
        if fixtures:
            assert BLOB_A_NAME.encode() in names


def refused(
    address: Address | str,
    tls: TlsOptions | None,
    *,
    connect_timeout: float | None = CONNECT_TIMEOUT,
) -> Unavailable:
    """open_services (or a first call) fails with Unavailable, promptly; returns the error."""
    started = time.monotonic()
    with (
        pytest.raises(Unavailable) as info,
        open_services(
            address, timeout=CONNECT_TIMEOUT, connect_timeout=connect_timeout, tls=tls
        ) as client,
    ):
        client.blobs.stat(B3Digest(fx.b3(fx.BLOB_B)))
    elapsed = time.monotonic() - started
    assert elapsed < PROMPT, f"took {elapsed:.1f} s to fail"
    return info.value


# --------------------------------------------------------------------------------------------
# Client library against CastoreServer


def test_client_with_the_ca_talks_to_the_tls_server(tls_server: CastoreServer, pki: Pki) -> None:
    assert tls_server.address.scheme == "grpc+https"
    assert tls_server.address.port not in (None, 0)
    round_trip(tls_server.address, pki.client_tls())


def test_server_name_localhost_is_verified_too(tls_server: CastoreServer, pki: Pki) -> None:
    round_trip(f"grpc+https://localhost:{tls_server.port}", pki.client_tls())


def test_client_without_the_ca_is_refused(tls_server: CastoreServer) -> None:
    """No --tls-ca: the system's roots apply, and they do not know our CA."""
    error = refused(tls_server.address, None)
    assert str(tls_server.address) in str(error)
    assert "CERTIFICATE_VERIFY_FAILED" in str(error) or "handshake" in str(error).lower(), error


def test_client_with_a_wrong_ca_is_refused(tls_server: CastoreServer, pki: Pki) -> None:
    error = refused(tls_server.address, pki.client_tls(ca=pki.other_ca))
    assert "CERTIFICATE_VERIFY_FAILED" in str(error) or "handshake" in str(error).lower(), error


def test_call_without_connect_timeout_fails_at_its_deadline(
    tls_server: CastoreServer, pki: Pki
) -> None:
    """Without a connect check, the first call still fails with Unavailable, not a hang."""
    refused(tls_server.address, TlsOptions(pki.other_ca.read_bytes()), connect_timeout=None)


def test_certificate_for_another_name_is_refused(store: Services, pki: Pki) -> None:
    tls = ServerTlsOptions(pki.misnamed_cert.read_bytes(), pki.misnamed_key.read_bytes())
    with CastoreServer(store, HTTPS_LISTEN, tls=tls) as server:
        refused(server.address, pki.client_tls())


def test_plaintext_client_of_a_tls_server_is_refused(tls_server: CastoreServer) -> None:
    refused(f"grpc+http://127.0.0.1:{tls_server.port}", None)


def test_tls_client_of_a_plaintext_server_is_refused(store: Services, pki: Pki) -> None:
    with CastoreServer(store, parse_address("grpc+http://127.0.0.1:0")) as server:
        refused(f"grpc+https://127.0.0.1:{server.port}", pki.client_tls())


def test_tls_applies_only_to_https_addresses(
    tls_server: CastoreServer, pki: Pki, tmp_path: pathlib.Path
) -> None:
    """Per-service addresses may mix a TLS server with an embedded store."""
    with open_services(
        tls_server.address,
        "memory://",
        "memory://",
        timeout=10,
        connect_timeout=CONNECT_TIMEOUT,
        tls=pki.client_tls(),
    ) as client:
        assert client.blobs.put([fx.BLOB_A]).raw == fx.b3(fx.BLOB_A)


def test_mutual_tls_accepts_a_client_certificate(mtls_server: CastoreServer, pki: Pki) -> None:
    round_trip(mtls_server.address, pki.client_tls(cert=True))


def test_mutual_tls_refuses_a_client_without_a_certificate(
    mtls_server: CastoreServer, pki: Pki
) -> None:
    error = refused(mtls_server.address, pki.client_tls())
    assert "client certificate" in str(error), error


def test_mutual_tls_refuses_a_certificate_from_another_ca(
    mtls_server: CastoreServer, pki: Pki
) -> None:
    tls = TlsOptions(
        root_certificates=pki.ca.read_bytes(),
        certificate_chain=pki.other_client_cert.read_bytes(),
        private_key=pki.other_client_key.read_bytes(),
    )
    refused(mtls_server.address, tls)


def test_server_names_a_key_that_does_not_fit_its_certificate(store: Services, pki: Pki) -> None:
    tls = ServerTlsOptions(pki.server_cert.read_bytes(), pki.client_key.read_bytes())
    with pytest.raises(InvalidTlsConfig, match="does the key belong to the certificate"):
        CastoreServer(store, HTTPS_LISTEN, tls=tls)


def test_server_refuses_mismatched_listen_and_tls(store: Services, pki: Pki) -> None:
    with pytest.raises(ValueError, match="certificate"):
        CastoreServer(store, HTTPS_LISTEN)
    with pytest.raises(ValueError, match="grpc\\+https"):
        CastoreServer(store, parse_address("grpc+http://127.0.0.1:0"), tls=pki.server_tls())


# --------------------------------------------------------------------------------------------
# Loading PEM files


def test_read_pem_accepts_certificates_and_keys(pki: Pki) -> None:
    assert read_pem(pki.ca, "certificate") == pki.ca.read_bytes()
    assert read_pem(pki.server_key, "private key") == pki.server_key.read_bytes()
    assert pem_labels(pki.server_cert.read_bytes()) == ["CERTIFICATE"]


def test_read_pem_errors_name_the_file(pki: Pki, tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "absent.pem"
    with pytest.raises(InvalidTlsConfig, match=f"--tls-ca {missing}: no such file"):
        read_pem(missing, "certificate", "--tls-ca")
    with pytest.raises(InvalidTlsConfig, match="is a directory"):
        read_pem(tmp_path, "certificate", "--tls-ca")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"\x00\x01 not a certificate")
    with pytest.raises(InvalidTlsConfig, match=f"{garbage}: not a PEM certificate file"):
        read_pem(garbage, "certificate")
    with pytest.raises(InvalidTlsConfig, match="holds PRIVATE KEY"):
        read_pem(pki.server_key, "certificate", "--tls-cert")
    with pytest.raises(InvalidTlsConfig, match="not a PEM private key file .*CERTIFICATE"):
        read_pem(pki.server_cert, "private key", "--tls-key")
    broken = tmp_path / "broken.pem"
    broken.write_bytes(
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(InvalidTlsConfig, match="not a PEM certificate"):
        read_pem(broken, "certificate")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    with pytest.raises(InvalidTlsConfig, match="encrypted"):
        read_pem(encrypted, "private key", "--tls-key")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_read_pem_unreadable_file(pki: Pki, tmp_path: pathlib.Path) -> None:
    locked = tmp_path / "locked.pem"
    locked.write_bytes(pki.ca.read_bytes())
    locked.chmod(0)
    with pytest.raises(InvalidTlsConfig, match="cannot read"):
        read_pem(locked, "certificate", "--tls-ca")


def test_certificate_and_key_go_together(pki: Pki) -> None:
    with pytest.raises(InvalidTlsConfig, match="--tls-cert needs --tls-key"):
        TlsOptions.load(cert=pki.client_cert)
    with pytest.raises(InvalidTlsConfig, match="--tls-key needs --tls-cert"):
        TlsOptions.load(key=pki.client_key)
    with pytest.raises(InvalidTlsConfig, match="go together"):
        TlsOptions(private_key=pki.client_key.read_bytes())
    loaded = TlsOptions.load(pki.ca, pki.client_cert, pki.client_key)
    assert loaded.root_certificates == pki.ca.read_bytes()
    assert loaded.certificate_chain == pki.client_cert.read_bytes()


# --------------------------------------------------------------------------------------------
# The command line


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    for name in ("CASTORE_STORE", "BLOB_SERVICE_ADDR", "DIRECTORY_SERVICE_ADDR"):
        env.pop(name, None)
    env.pop("PATH_INFO_SERVICE_ADDR", None)
    return env


def castore(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "castore_fuse", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=_env(),
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_cli_import_over_tls(tls_server: CastoreServer, pki: Pki, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "hello.txt"
    source.write_bytes(fx.HELLOWORLD)
    result = castore(
        "import", "--no-progress", "--store", str(tls_server.address), "--tls-ca", str(pki.ca),
        "--connect-timeout", str(CONNECT_TIMEOUT), str(source),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("/nix/store/")
    assert result.stdout.strip().endswith("-hello.txt")


def test_cli_import_with_client_certificate(
    mtls_server: CastoreServer, pki: Pki, tmp_path: pathlib.Path
) -> None:
    source = tmp_path / "hello.txt"
    source.write_bytes(fx.HELLOWORLD)
    base = ["import", "--no-progress", "--store", str(mtls_server.address)]
    base += ["--tls-ca", str(pki.ca), "--connect-timeout", str(CONNECT_TIMEOUT), "--timeout", "10"]
    ok = castore(
        *base, "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key), str(source)
    )
    assert ok.returncode == 0, ok.stderr
    started = time.monotonic()
    line = one_line_error(castore(*base, str(source)))
    assert time.monotonic() - started < PROMPT + 10
    assert str(mtls_server.address) in line


def test_cli_import_without_the_ca_is_one_line(
    tls_server: CastoreServer, tmp_path: pathlib.Path
) -> None:
    source = tmp_path / "hello.txt"
    source.write_bytes(fx.HELLOWORLD)
    args = ["import", "--no-progress", "--store", str(tls_server.address)]
    result = castore(*args, "--connect-timeout", "2", str(source))
    line = one_line_error(result)
    assert result.stderr.strip() == line, "gRPC's own handshake logs reached stderr"
    assert str(tls_server.address) in line
    assert "CERTIFICATE_VERIFY_FAILED" in line or "handshake" in line.lower(), line


@pytest.mark.parametrize(
    ("flag", "problem"),
    [("--tls-ca", "missing"), ("--tls-ca", "not_pem"), ("--tls-cert", "missing")],
)
def test_cli_bad_tls_file_is_one_line(
    tls_server: CastoreServer, pki: Pki, tmp_path: pathlib.Path, flag: str, problem: str
) -> None:
    source = tmp_path / "hello.txt"
    source.write_bytes(fx.HELLOWORLD)
    bad = tmp_path / "bad.pem"
    if problem == "not_pem":
        bad.write_text("hello\n")
    args = ["import", "--store", str(tls_server.address), flag, str(bad)]
    if flag == "--tls-cert":
        args += ["--tls-key", str(pki.client_key)]
    line = one_line_error(castore(*args, str(source)))
    assert f"{flag} {bad}" in line
    assert ("no such file" if problem == "missing" else "not a PEM certificate") in line


def test_cli_tls_flags_need_an_https_address(pki: Pki, tmp_path: pathlib.Path) -> None:
    line = one_line_error(
        castore("import", "--store", "memory://", "--tls-ca", str(pki.ca), str(tmp_path))
    )
    assert "--tls-ca applies to grpc+https addresses only" in line
    args = ["import", "--store", "grpc+https://127.0.0.1:1"]
    line = one_line_error(castore(*args, "--tls-cert", str(pki.client_cert), str(tmp_path)))
    assert "--tls-cert needs --tls-key" in line


def test_cli_mount_missing_ca_is_one_line(tmp_path: pathlib.Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    missing = tmp_path / "ca.pem"
    args = ["mount", "--store", "grpc+https://127.0.0.1:1", "--tls-ca", str(missing)]
    line = one_line_error(castore(*args, str(mountpoint)))
    assert f"--tls-ca {missing}: no such file" in line


def start_serve(*args: str) -> tuple[subprocess.Popen[str], str, str]:
    """`castore serve ARGS`, the address from its ready line, and its output until then."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "castore_fuse", "serve", "--store", "memory://", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
        env=_env(),
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if "ready on" in line:
            address = line.split("ready on ", 1)[1].split(",", 1)[0].strip()
            return proc, address, "".join(seen)
    proc.kill()
    proc.wait()
    raise AssertionError(f"serve never became ready:\n{''.join(seen)}")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    finally:
        proc.kill()


def test_cli_serve_over_tls(pki: Pki) -> None:
    proc, address, _output = start_serve(
        "--listen", "grpc+https://127.0.0.1:0",
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
    )  # fmt: skip
    try:
        assert address.startswith("grpc+https://127.0.0.1:")
        assert not address.endswith(":0")
        round_trip(address, pki.client_tls(), fixtures=False)
        refused(address, None)
    finally:
        stop(proc)


def test_cli_serve_requiring_client_certificates(pki: Pki) -> None:
    proc, address, _output = start_serve(
        "--listen", "grpc+https://127.0.0.1:0",
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--tls-client-ca", str(pki.client_ca),
    )  # fmt: skip
    try:
        round_trip(address, pki.client_tls(cert=True), fixtures=False)
        refused(address, pki.client_tls())
    finally:
        stop(proc)


def test_cli_serve_tls_warns_without_client_ca_off_loopback(pki: Pki) -> None:
    server = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    proc, _address, output = start_serve("--listen", "grpc+https://0.0.0.0:0", *server)
    stop(proc)
    assert "without --tls-client-ca" in output
    proc, _address, output = start_serve(
        "--listen", "grpc+https://0.0.0.0:0", *server, "--tls-client-ca", str(pki.client_ca)
    )
    stop(proc)
    assert "WARNING" not in output, output
    proc, _address, output = start_serve("--listen", "grpc+https://127.0.0.1:0", *server)
    stop(proc)
    assert "WARNING" not in output, output


HTTPS_ANY = ["--listen", "grpc+https://127.0.0.1:0"]
HTTP_ANY = ["--listen", "grpc+http://127.0.0.1:0"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (HTTPS_ANY, "needs --tls-cert FILE and --tls-key FILE"),
        ([*HTTP_ANY, "--tls-cert", "x.pem"], "--tls-cert needs --listen grpc+https"),
        (
            [*HTTPS_ANY, "--tls-cert", "MISSING", "--tls-key", "MISSING"],
            "--tls-cert MISSING: no such file",
        ),
        (
            [*HTTPS_ANY, "--tls-cert", "SERVER_CERT", "--tls-key", "CLIENT_KEY"],
            "does the key belong to the certificate?",
        ),
    ],
    ids=["no_cert", "tls_without_https", "missing_file", "mismatched_key"],
)
def test_cli_serve_tls_errors_are_one_line(
    args: list[str], message: str, tmp_path: pathlib.Path, pki: Pki
) -> None:
    files = {
        "MISSING": str(tmp_path / "missing.pem"),
        "SERVER_CERT": str(pki.server_cert),
        "CLIENT_KEY": str(pki.client_key),
    }
    args = [files.get(a, a) for a in args]
    message = message.replace("MISSING", str(tmp_path / "missing.pem"))
    line = one_line_error(castore("serve", "--store", "memory://", *args, timeout=30))
    assert message in line


# --------------------------------------------------------------------------------------------
# A mount over TLS


@pytest.mark.fuse
def test_mount_over_mutual_tls(
    mtls_server: CastoreServer, pki: Pki, tmp_path: pathlib.Path
) -> None:
    require_fuse()
    flags = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert)]
    flags += ["--tls-key", str(pki.client_key), "--connect-timeout", str(CONNECT_TIMEOUT)]
    with mounted(mtls_server.address, *flags, tmp_path=tmp_path) as root:
        assert (root / HELLOWORLD_NAME).read_bytes() == fx.HELLOWORLD
        assert (root / BLOB_A_NAME).read_bytes() == fx.BLOB_A
