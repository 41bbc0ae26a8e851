"""DICOM over TLS: dcmtk's storescu with a throwaway CA's certificates stores on the TLS port as on the
plain one; a client certificate is required when PACSFLOW_SCP_TLS_CA is set; the plain port can be
turned off; known peers apply on the TLS port too."""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests.conftest import Scp, ScpFactory
from tests.support import dicomdata
from tests.support.dicomdata import dataset_bytes, uid
from tests.support.dimse import echoscu, require_dcmtk, storescu, tls_options
from tests.support.services import Broker, free_port, pacsflow, port_open, wait_for
from tests.support.tls import Pki, make_pki

pytestmark = [pytest.mark.broker, pytest.mark.dcmtk]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def start(start_scp: ScpFactory, broker: Broker, pki: Pki, **env: str) -> tuple[Scp, int]:
    """`pacsflow scp` with a TLS port (its number returned beside it), listening."""
    require_dcmtk()
    tls_port = free_port()
    scp = start_scp(
        broker.bootstrap,
        wait=False,
        scp_tls_port=str(tls_port),
        scp_tls_cert=str(pki.server_cert),
        scp_tls_key=str(pki.server_key),
        **env,
    )
    wait_for(
        lambda: scp.service.events("scp_listening") or not scp.service.alive(), 60, "`pacsflow scp` to listen"
    )
    assert scp.service.alive(), scp.service.log_path.read_text()[-3000:]
    return scp, tls_port


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def one_instance(folder: Path) -> tuple[Path, Dataset]:
    run = uuid.uuid4().int % 10**12
    ds = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 1)[0]
    return dicomdata.write(ds, folder / "one.dcm"), ds


def stored(scp: Scp, ds: Dataset) -> Path:
    path: Path = scp.storage_root / "default" / ds.StudyInstanceUID / ds.SeriesInstanceUID
    return path / f"{ds.SOPInstanceUID}.dcm"


@pytest.mark.parametrize("processes", ["1", "2"])
def test_storescu_over_tls_stores_as_over_plain_dicom(
    start_scp: ScpFactory, broker: Broker, pki: Pki, tmp_path: Path, processes: str
) -> None:
    # Two processes: the TLS port is bound by `pacsflow scp` and handed down to both.
    scp, tls_port = start(start_scp, broker, pki, scp_processes=processes)
    source, ds = one_instance(tmp_path)

    result = storescu(tls_port, [source], extra=tls_options(pki))

    assert result.returncode == 0, output(result)
    path = stored(scp, ds)
    assert path.is_file()
    assert dataset_bytes(path) == dataset_bytes(source)
    [record] = broker.read("storage_queue", 1, where=lambda v: v["SopInstanceUID"] == ds.SOPInstanceUID)
    event = json.loads(record.value)
    assert (event["SourceAE"], event["SourceIP"], event["TenantID"]) == ("TESTSCU", "127.0.0.1", "default")
    assert event["FilePath"] == path.relative_to(scp.storage_root).as_posix()
    # The plain port still serves beside it.
    assert echoscu(scp.port).returncode == 0


def test_a_client_without_certificate_is_refused_when_client_cas_are_set(
    start_scp: ScpFactory, broker: Broker, pki: Pki, tmp_path: Path
) -> None:
    scp, tls_port = start(start_scp, broker, pki, scp_tls_ca=str(pki.ca))
    source, ds = one_instance(tmp_path)

    anonymous = storescu(tls_port, [source], extra=tls_options(pki, certificate=False))

    assert anonymous.returncode != 0, output(anonymous)
    assert "Association Request Failed" in output(anonymous), output(anonymous)
    assert not stored(scp, ds).exists()
    [refused] = wait_for(lambda: scp.service.events("tls_handshake_failed"), 10, "the refusal in the log")
    assert refused["address"] == "127.0.0.1"
    assert "CERTIFICATE" in str(refused["reason"]).upper(), refused

    # The same client with its certificate, signed by the CA, is let in.
    result = storescu(tls_port, [source], extra=tls_options(pki))
    assert result.returncode == 0, output(result)
    assert stored(scp, ds).is_file()


def test_a_client_certificate_from_another_ca_is_refused(
    start_scp: ScpFactory, broker: Broker, pki: Pki, tmp_path: Path
) -> None:
    # The port trusts only other_ca, which signed nothing: the client's certificate proves nothing.
    scp, tls_port = start(start_scp, broker, pki, scp_tls_ca=str(pki.other_ca))
    source, ds = one_instance(tmp_path)

    result = storescu(tls_port, [source], extra=tls_options(pki))

    assert result.returncode != 0, output(result)
    assert not stored(scp, ds).exists()
    [refused] = wait_for(lambda: scp.service.events("tls_handshake_failed"), 10, "the refusal in the log")
    assert "CERTIFICATE" in str(refused["reason"]).upper(), refused


def test_with_plain_off_only_the_tls_port_listens_and_known_peers_apply_on_it(
    start_scp: ScpFactory, broker: Broker, pki: Pki, tmp_path: Path
) -> None:
    scp, tls_port = start(start_scp, broker, pki, scp_plain="off", scp_peers="TESTSCU=default")
    source, ds = one_instance(tmp_path)

    assert not port_open(scp.port)
    stranger = storescu(tls_port, [source], calling="STRANGER", extra=tls_options(pki))
    assert stranger.returncode != 0 and "Calling AE Title Not Recognized" in output(stranger), output(
        stranger
    )
    assert not stored(scp, ds).exists()

    known = storescu(tls_port, [source], calling="TESTSCU", extra=tls_options(pki))
    assert known.returncode == 0, output(known)
    assert stored(scp, ds).is_file()


def test_a_plain_client_on_the_tls_port_gets_nothing_stored(
    start_scp: ScpFactory, broker: Broker, pki: Pki, tmp_path: Path
) -> None:
    scp, tls_port = start(start_scp, broker, pki)
    source, ds = one_instance(tmp_path)

    result = storescu(tls_port, [source])

    assert result.returncode != 0, output(result)
    assert not stored(scp, ds).exists()
    wait_for(lambda: scp.service.events("tls_handshake_failed"), 10, "the refusal in the log")
    assert scp.service.alive()


def test_a_peer_that_connects_and_says_nothing_holds_up_no_one(
    start_scp: ScpFactory, broker: Broker, pki: Pki, tmp_path: Path
) -> None:
    # One process, whose one TLS acceptor would wait for the silent peer's handshake (30 s, the
    # ACSE timeout) if it shook hands itself; storescu gives up after 20 s.
    scp, tls_port = start(start_scp, broker, pki, scp_processes="1")
    source, ds = one_instance(tmp_path)

    with socket.create_connection(("127.0.0.1", tls_port)):
        result = storescu(tls_port, [source], extra=tls_options(pki))

    assert result.returncode == 0, output(result)
    assert stored(scp, ds).is_file()


def test_a_certificate_that_cannot_be_used_stops_the_start_with_a_clear_error(
    tmp_path: Path, pki: Pki
) -> None:
    result = pacsflow(
        "scp",
        env={
            "PACSFLOW_DATA_DIR": str(tmp_path),
            "PACSFLOW_SCP_PORT": str(free_port()),
            "PACSFLOW_SCP_TLS_PORT": str(free_port()),
            "PACSFLOW_SCP_TLS_CERT": str(pki.server_cert),
            "PACSFLOW_SCP_TLS_KEY": str(pki.client_key),  # not the certificate's
            "PACSFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        },
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert f"cannot use the DICOM TLS certificate {pki.server_cert}" in result.stderr
    assert "check PACSFLOW_SCP_TLS_CERT and PACSFLOW_SCP_TLS_KEY" in result.stderr
