"""Talking DICOM to the SCP: dcmtk's tools (by their Debian path) and pynetdicom as peers."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, AllStoragePresentationContexts, _config, build_context
from pynetdicom.sop_class import Verification

from tests.support.services import DCMTK, port_open, require
from tests.support.tls import Pki

# A file is sent byte for byte as it is on disk (truncated, inconsistent, ...), never re-encoded.
_config.STORE_SEND_CHUNKED_DATASET = True


def _dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}  # dcmtk reads it: no Nagle delay on small PDUs


def require_dcmtk() -> None:
    require(
        (DCMTK / "storescu").exists() and (DCMTK / "echoscu").exists(),
        "Debian's dcmtk (make test installs it: apt-get install dcmtk)",
    )


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    called: str = "PACSFLOW",
    calling: str = "TESTSCU",
    extra: Sequence[str] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(DCMTK / "storescu"),
            "-aet",
            calling,
            "-aec",
            called,
            "-to",
            "20",
            *extra,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=_dcmtk_env(),
    )


def echoscu(
    port: int, called: str = "PACSFLOW", *, calling: str | None = None, extra: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """``calling``: dcmtk's own (ECHOSCU) unless given."""
    return subprocess.run(
        [
            str(DCMTK / "echoscu"),
            *(["-aet", calling] if calling else []),
            "-aec",
            called,
            "-to",
            "5",
            *extra,
            "127.0.0.1",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=_dcmtk_env(),
    )


def tls_options(pki: Pki, *, certificate: bool = True) -> list[str]:
    """dcmtk's options for DICOM over TLS, trusting ``pki``'s CA: with its client certificate, or
    without any (``+tla``, anonymous)."""
    client = ["+tls", str(pki.client_key), str(pki.client_cert)] if certificate else ["+tla"]
    return [*client, "+cf", str(pki.ca)]


def c_echo(port: int, *, check_port: bool = True) -> bool:
    # pynetdicom leaks its socket when a connection is refused; a bare TCP check avoids that but
    # occupies an association slot until the ACSE timeout, so callers that know the port is
    # listening skip it.
    if check_port and not port_open(port):
        return False
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 2
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSFLOW")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def scu(*syntaxes: str, called: str = "PACSFLOW") -> AE:
    """A pynetdicom SCU proposing every storage SOP class in ``syntaxes``."""
    ae = AE(ae_title="PYSCU")
    for context in AllStoragePresentationContexts[:127]:
        ae.add_requested_context(context.abstract_syntax, list(syntaxes) or None)
    return ae


def store_one(
    port: int, dataset: Dataset | Path, syntax: str | Sequence[str], called: str = "PACSFLOW"
) -> Dataset:
    """Send one instance in its own association, proposing its SOP class with ``syntax`` (or these
    syntaxes, in this order, in one context, as a modality does that lists what it can send);
    return the response status dataset."""
    ae = AE(ae_title="PYSCU")
    if isinstance(dataset, Path):
        sop_class = read_file_meta_info(dataset).MediaStorageSOPClassUID
    else:
        sop_class = dataset.file_meta.MediaStorageSOPClassUID
    ae.requested_contexts = [build_context(sop_class, [syntax] if isinstance(syntax, str) else list(syntax))]
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "association was not accepted"
    try:
        status = assoc.send_c_store(dataset)
    finally:
        assoc.release()
    assert status, "no response to C-STORE"
    return status


def dcmtk_status_ok(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0 and "Failed" not in result.stderr and "Error" not in result.stderr


def dcmtk_available() -> bool:
    return shutil.which(str(DCMTK / "storescu")) is not None
