"""What `pacsflow dev` prints once everything runs: the ports that listen, and what is left open."""

from __future__ import annotations

from pipeline.dev.stack import banner
from pipeline.settings import load

BASE = {"PACSFLOW_SCP_PORT": "11112", "PACSFLOW_SCP_TLS_PORT": "2762", "PACSFLOW_HTTP_PORT": "8080"}
TLS = {"PACSFLOW_SCP_TLS_CERT": "/etc/pacsflow/scp.pem", "PACSFLOW_SCP_TLS_KEY": "/etc/pacsflow/scp.key"}
JWT = {"PACSFLOW_AUTH": "jwt", "PACSFLOW_OIDC_ISSUER": "https://id.example.org/realms/pacs"}


def dicom_lines(**env: str) -> list[str]:
    text = banner(load({**BASE, **JWT, **env}), embedded_broker=True, embedded_db=True)
    return [line for line in text.splitlines() if line.startswith("  DICOM ")]


def test_the_plain_port_alone_by_default() -> None:
    assert dicom_lines() == ["  DICOM (C-STORE, C-ECHO)  127.0.0.1:11112  AE title PACSFLOW"]


def test_the_tls_port_beside_the_plain_one() -> None:
    assert dicom_lines(**TLS) == [
        "  DICOM (C-STORE, C-ECHO)  127.0.0.1:11112  AE title PACSFLOW",
        "  DICOM over TLS           127.0.0.1:2762  AE title PACSFLOW",
    ]


def test_the_tls_port_alone_when_plain_is_off_with_its_restrictions() -> None:
    lines = dicom_lines(
        **TLS,
        PACSFLOW_SCP_PLAIN="off",
        PACSFLOW_SCP_TLS_CA="/etc/pacsflow/ca.pem",
        PACSFLOW_SCP_PEERS="CT1=default,MR1=default",
    )
    assert lines == [
        "  DICOM over TLS           127.0.0.1:2762  AE title PACSFLOW, 2 known peers only, "
        "client certificates required"
    ]


def test_a_warning_when_dicomweb_is_open_to_anyone() -> None:
    open_text = banner(load(BASE), embedded_broker=True, embedded_db=True)
    warning = (
        "  WARNING: PACSFLOW_AUTH=off: anyone who reaches port 8080 reads, stores and deletes "
        "(see README, 'Security')"
    )
    assert warning in open_text.splitlines()
    assert "WARNING" not in banner(load({**BASE, **JWT}), embedded_broker=True, embedded_db=True)
