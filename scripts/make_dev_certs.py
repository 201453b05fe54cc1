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

An existing CA in ``--out`` is kept (and the SuperLink certificate it signed), so a site can
be added later; existing SuperNode keys are never overwritten. ``--new-ca`` starts afresh.
Private keys are created readable by their owner only (mode 0600 from the first byte).

For development only: the keys are unencrypted and the CA signs whatever this script asks.
In production the certificates come from your organisation's CA and each site makes its own
key pair and hands over only the public key.

    python scripts/make_dev_certs.py --out certificates --supernodes site-0 site-1
    python scripts/make_dev_certs.py --out certificates --supernodes site-2   # add a site
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
# A site name becomes a file name and a SuperNode name: letters, digits, '.', '_', '-'.
SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def check_site_name(name: str) -> str:
    """``name`` if it is a safe file and site name, else ``ValueError`` saying why."""
    if not SITE_NAME.fullmatch(name) or ".." in name or name.endswith(".pub"):
        raise ValueError(
            f"site name {name!r} is not allowed: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '..', no path separators, no '.pub' ending)"
        )
    if name in ("ca", "server"):
        raise ValueError(f"site name {name!r} is reserved for the CA and SuperLink files")
    return name


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
    """Write a new file; a private one is created with mode 0600, never readable by others
    (not even between creation and a chmod)."""
    if not private:
        path.write_bytes(data)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def make_tls(out: Path, hosts: Sequence[str], days: int = 365) -> None:
    """A CA and a server certificate for ``hosts``, signed by it (replacing any there)."""
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    for name in ("ca.key", "ca.crt", "server.key", "server.pem"):
        (out / name).unlink(missing_ok=True)

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
    """An EC P-384 key pair in OpenSSH format: (private key, public key).

    Refuses (``FileExistsError``) to replace a site's existing key: its public key may be
    registered with a SuperLink already.
    """
    private, public = out / check_site_name(name), out / f"{name}.pub"
    if private.exists() or public.exists():
        raise FileExistsError(
            f"{private} already exists: this site has a key (registered with the SuperLink?); "
            "delete it first to make a new one"
        )
    key = ec.generate_private_key(ec.SECP384R1())
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
    parser.add_argument(
        "--new-ca",
        action="store_true",
        help="make a new CA and SuperLink certificate even if --out holds one (every site "
        "must then get the new ca.crt)",
    )
    args = parser.parse_args(argv)
    try:
        names = [check_site_name(n) for n in args.supernodes]
    except ValueError as err:
        parser.error(str(err))
    taken = [n for n in names if (args.out / n).exists() or (args.out / f"{n}.pub").exists()]
    if taken:
        parser.error(f"{args.out} already holds a key for {', '.join(taken)}; nothing written")

    args.out.mkdir(parents=True, exist_ok=True)
    args.out.chmod(0o700)
    have_ca = all((args.out / f).exists() for f in ("ca.crt", "ca.key", "server.pem"))
    if args.new_ca or not have_ca:
        make_tls(args.out, args.hosts, args.days)
        tls = f"a new CA and SuperLink certificate (SAN: {', '.join(args.hosts)})"
    else:
        tls = "the existing CA and SuperLink certificate (kept)"
    for name in names:
        make_supernode_keys(args.out, name)
    print(f"{args.out}: {tls}; new SuperNode key pairs: {', '.join(names) or 'none'}")


if __name__ == "__main__":
    main()
