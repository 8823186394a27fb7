"""Certificates and keys for a throw-away control plane, made the way envtest makes them.

One CA signs the apiserver's serving certificate (IP SAN 127.0.0.1) and the client certificates
(the admin user and kube-controller-manager, both in ``system:masters``); a separate RSA key signs
service-account tokens.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=2)
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
SERVING_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class CertPair:
    """PEM paths of a certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ControlPlanePki:
    """Every file the control plane's processes and its clients are started with."""

    ca: CertPair
    apiserver_serving: CertPair
    admin_client: CertPair
    controller_manager_client: CertPair
    apiserver_kubelet_client: CertPair
    service_account_private_key: Path
    service_account_public_key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _leaf(
    directory: Path,
    stem: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> CertPair:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(subject, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return CertPair(
        cert=_write(directory / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM)),
        key=_write(directory / f"{stem}.key", _key_pem(key)),
    )


def generate_pki(directory: Path, extra_serving_ips: tuple[str, ...] = ()) -> ControlPlanePki:
    """Write a fresh CA, serving and client certificates and service-account keys into ``directory``.

    ``extra_serving_ips`` are further IP SANs of the apiserver's serving certificate (a node's IP).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("o1pool-testground-ca")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca = CertPair(
        cert=_write(directory / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM)),
        key=_write(directory / "ca.key", _key_pem(ca_key)),
    )
    serving_sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address(KUBERNETES_SERVICE_IP)),
        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_serving_ips),
        *(x509.DNSName(name) for name in SERVING_DNS_NAMES),
    ]
    serving = _leaf(
        directory,
        "apiserver",
        ca_cert,
        ca_key,
        _name("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        serving_sans,
    )
    admin = _leaf(
        directory, "admin", ca_cert, ca_key, _name("admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH
    )
    controller_manager = _leaf(
        directory,
        "controller-manager",
        ca_cert,
        ca_key,
        _name("system:kube-controller-manager", "system:masters"),
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    # The apiserver's client certificate for the kubelet API (logs, exec) when a node joins.
    apiserver_kubelet_client = _leaf(
        directory,
        "apiserver-kubelet-client",
        ca_cert,
        ca_key,
        _name("kube-apiserver-kubelet-client", "system:masters"),
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_private = _write(directory / "sa.key", _key_pem(sa_key))
    sa_public = _write(
        directory / "sa.pub",
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return ControlPlanePki(
        ca=ca,
        apiserver_serving=serving,
        admin_client=admin,
        controller_manager_client=controller_manager,
        apiserver_kubelet_client=apiserver_kubelet_client,
        service_account_private_key=sa_private,
        service_account_public_key=sa_public,
    )


@dataclass(frozen=True)
class NodePki:
    """The certificates of a node's components, signed by the control plane's CA."""

    kubelet_client: CertPair
    kubelet_serving: CertPair
    scheduler_client: CertPair
    proxy_client: CertPair
    coredns_client: CertPair


def generate_node_pki(directory: Path, ca: CertPair, node_name: str, node_ip: str) -> NodePki:
    """Certificates for one node's components, signed by the control plane's CA: the kubelet's
    client (``system:node:NAME`` in ``system:nodes``, as the Node authorizer expects) and serving
    certificate (its IP), kube-scheduler's and kube-proxy's clients (users the default RBAC bindings
    name) and CoreDNS's (bound to a ClusterRole by the node)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    client = ExtendedKeyUsageOID.CLIENT_AUTH

    def leaf(
        stem: str,
        subject: x509.Name,
        usage: x509.ObjectIdentifier = client,
        sans: list[x509.GeneralName] | None = None,
    ) -> CertPair:
        return _leaf(directory, stem, ca_cert, ca_key, subject, usage, sans)

    return NodePki(
        kubelet_client=leaf("kubelet-client", _name(f"system:node:{node_name}", "system:nodes")),
        kubelet_serving=leaf(
            "kubelet-serving",
            _name(node_name),
            ExtendedKeyUsageOID.SERVER_AUTH,
            sans=[x509.IPAddress(ipaddress.ip_address(node_ip)), x509.DNSName(node_name)],
        ),
        scheduler_client=leaf("scheduler-client", _name("system:kube-scheduler")),
        proxy_client=leaf("proxy-client", _name("system:kube-proxy")),
        coredns_client=leaf("coredns-client", _name("system:coredns")),
    )
