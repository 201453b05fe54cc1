"""Development TLS material and SuperNode keys for a SuperLink on this machine.

Writes into ``--out`` (default ``certificates/``):

- ``ca.crt``, ``ca.key``: a self-signed certificate authority (the root the SuperNodes and
  the ``flwr`` CLI trust: ``--root-certificates`` / ``root-certificates``);
- ``server.pem``, ``server.key``: the SuperLink's certificate, signed by the CA, with
  subject alternative names for every ``--host`` (default ``localhost``, ``127.0.0.1``,
  ``::1``);
- ``<name>`` and ``<name>.pub`` per SuperNode: an EC P-384 key pair in OpenSSH format, the
  format ``flower-supernode --auth-supernode-private-key`` reads and
  ``flwr supernode register`` accepts.

For development only: the keys are unencrypted and the CA signs whatever this script asks.
In production the certificates come from your organisation's CA and each site makes its own
key pair and hands over only the public key.

    python scripts/make_dev_certs.py --out certificates --supernodes site-0 site-1
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "G2I-Fed development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def make_tls(out: Path, hosts: Sequence[str], days: int = 365) -> None:
    """A CA and a server certificate for ``hosts``, signed by it."""
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("G2I-Fed development CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )

    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )

    _write(out / "ca.key", _pem_key(ca_key), private=True)
    _write(out / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "server.key", _pem_key(key), private=True)
    _write(out / "server.pem", cert.public_bytes(serialization.Encoding.PEM))


def make_supernode_keys(out: Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format: (private key, public key)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = out / name, out / f"{name}.pub"
    _write(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        private=True,
    )
    _write(
        public,
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + f" {name}\n".encode(),
    )
    return private, public


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("certificates"))
    parser.add_argument(
        "--hosts",
        nargs="+",
        default=list(DEFAULT_HOSTS),
        help="DNS names and IP addresses the SuperLink certificate is valid for",
    )
    parser.add_argument(
        "--supernodes",
        nargs="*",
        default=["site-0", "site-1"],
        help="one authentication key pair per name",
    )
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    make_tls(args.out, args.hosts, args.days)
    for name in args.supernodes:
        make_supernode_keys(args.out, name)
    print(
        f"wrote ca.crt, server.pem, server.key and {len(args.supernodes)} SuperNode key "
        f"pair(s) to {args.out} (SAN: {', '.join(args.hosts)})"
    )


if __name__ == "__main__":
    main()
