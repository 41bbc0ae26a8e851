"""C-GET and C-MOVE against a real stack: dcmtk's getscu receives a series on its own association,
movescu has a study sent to a dcmtk storescp the test runs; what arrives is what was stored."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, JPEGLSLossless, MRImageStorage
from pynetdicom import AE, build_role, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pipeline.stores.postgres import migrate
from tests.conftest import scratch_database
from tests.integration.test_wado_metadata import get
from tests.support import dicomdata
from tests.support.dicomdata import dataset_bytes
from tests.support.dimse import require_dcmtk, store_one, storescu
from tests.support.services import DCMTK, Broker, free_port, wait_for
from tests.support.stack import running

pytestmark = [pytest.mark.broker, pytest.mark.dcmtk]


@dataclass
class Stack:
    base: str
    scp_port: int
    run: int
    folder: Path
    storage: Path
    destination_port: int

    def uid(self, *parts: int | str) -> str:
        return dicomdata.uid(self.run, *parts)

    def stored(self, sop: str, tenant: str = "default") -> Path:
        (path,) = (self.storage / tenant).rglob(f"{sop}.dcm")
        return path


def _dcmtk(tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DCMTK / tool), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def _series(stack: Stack, folder: Path, study: int, series: int, modality: str, count: int) -> list[Path]:
    files = []
    for n in range(1, count + 1):
        ds = dicomdata.image(
            CTImageStorage if modality == "CT" else MRImageStorage,
            stack.uid(study),
            stack.uid(study, series),
            stack.uid(study, series, n),
            n,
            patient_id="PR",
            patient_name="Retrieve^Me",
            modality=modality,
            rows=16,
            columns=16,
        )
        ds.SeriesNumber = series
        files.append(dicomdata.write(ds, folder / f"{study}-{series}-{n}.dcm"))
    return files


def _jpeg_ls(stack: Stack, folder: Path) -> Path:
    """A JPEG-LS instance (really encoded): a getscu proposing only uncompressed syntaxes gets it
    converted."""
    ds = dicomdata.image(
        CTImageStorage, stack.uid(1), stack.uid(1, 3), stack.uid(1, 3, 1), 1, patient_id="PR",
        patient_name="Retrieve^Me", rows=16, columns=16,
    )  # fmt: skip
    ds.SeriesNumber = 3
    pixels = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 11) % 4096
    ds.compress(JPEGLSLossless, pixels, generate_instance_uid=False)
    return dicomdata.write(ds, folder / "jpeg-ls.dcm")


@pytest.fixture(scope="module")
def stack(broker: Broker, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_dcmtk()
    tmp = tmp_path_factory.mktemp("scp-retrieve")
    destination_port = free_port()
    destinations = f"STORESCP=127.0.0.1:{destination_port},ALPHAONLY@alpha=127.0.0.1:{destination_port}"
    with scratch_database() as dsn:
        asyncio.run(migrate(dsn))
        with running(
            broker.bootstrap,
            redis_url,
            tmp,
            dsn,
            scp={"PACSFLOW_SCP_TENANTS": "ALPHA=alpha", "PACSFLOW_SCP_MOVE_DESTINATIONS": destinations},
        ) as services:
            stack = Stack(
                services.base,
                services.scp_port,
                uuid.uuid4().int % 10**12,
                tmp,
                tmp / "storage",
                destination_port,
            )
            send = tmp / "send"
            files = _series(stack, send, 1, 1, "CT", 4) + _series(stack, send, 1, 2, "MR", 3)
            assert storescu(stack.scp_port, files).returncode == 0
            assert store_one(stack.scp_port, _jpeg_ls(stack, send), JPEGLSLossless).Status == 0
            # Indexed, as QIDO-RS says.
            url = f"{stack.base}/dicomweb/studies/{stack.uid(1)}/instances"
            wait_for(
                lambda: get(url)[0] == 200 and get(url)[2].count(b'"00080018"') == 8,
                60,
                "8 instances indexed",
            )
            yield stack


def test_getscu_receives_a_series_byte_for_byte(stack: Stack) -> None:
    out = stack.folder / f"get-{uuid.uuid4().hex}"
    out.mkdir()
    result = _dcmtk(
        "getscu", "-aet", "GETSCU", "-aec", "PACSFLOW", "-S", "+B", "-od", str(out),
        "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={stack.uid(1)}",
        "-k", f"SeriesInstanceUID={stack.uid(1, 1)}", "127.0.0.1", str(stack.scp_port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    received = {dcmread(path, stop_before_pixels=True).SOPInstanceUID: path for path in out.iterdir()}
    assert set(received) == {stack.uid(1, 1, n) for n in range(1, 5)}
    for sop, path in received.items():
        # The dataset after the file meta: getscu writes a meta of its own (its implementation,
        # the sender's AE title); with +B it writes the dataset exactly as it arrived (else dcmtk
        # re-encodes it: sequence lengths), so this compares what pacsflow sent with what it stored.
        assert dataset_bytes(path) == dataset_bytes(stack.stored(sop)), f"{sop} differs from the stored file"


def test_getscu_gets_an_instance_it_cannot_take_as_stored_converted(stack: Stack) -> None:
    out = stack.folder / f"get-{uuid.uuid4().hex}"
    out.mkdir()
    result = _dcmtk(
        "getscu", "-aet", "GETSCU", "-aec", "PACSFLOW", "-S", "+B", "-od", str(out),
        "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={stack.uid(1)}",
        "-k", f"SeriesInstanceUID={stack.uid(1, 3)}", "-k", f"SOPInstanceUID={stack.uid(1, 3, 1)}",
        "127.0.0.1", str(stack.scp_port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (path,) = out.iterdir()
    got, stored = dcmread(path), dcmread(stack.stored(stack.uid(1, 3, 1)))
    assert stored.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert (
        got.file_meta.TransferSyntaxUID != JPEGLSLossless
        and not got.file_meta.TransferSyntaxUID.is_compressed
    )
    assert got.SOPInstanceUID == stored.SOPInstanceUID
    assert np.array_equal(got.pixel_array, stored.pixel_array), "lossless: the same pixels"


@pytest.fixture
def destination(stack: Stack) -> Iterator[Path]:
    """dcmtk's storescp on the port the SCP's STORESCP destination names."""
    out = stack.folder / f"moved-{uuid.uuid4().hex}"
    out.mkdir()
    process = subprocess.Popen(
        [str(DCMTK / "storescp"), "-aet", "STORESCP", "+B", "-od", str(out), str(stack.destination_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    try:
        wait_for(lambda: _listening(stack.destination_port), 10, "storescp to listen")
        yield out
    finally:
        process.terminate()
        process.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_movescu_moves_a_study_to_storescp(stack: Stack, destination: Path) -> None:
    result = _dcmtk(
        "movescu", "-aet", "MOVESCU", "-aec", "PACSFLOW", "-aem", "STORESCP", "-S",
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={stack.uid(1)}",
        "127.0.0.1", str(stack.scp_port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = {stack.uid(1, s, n) for s, count in ((1, 4), (2, 3), (3, 1)) for n in range(1, count + 1)}
    # storescp has written each file by the time its C-STORE was answered, so before the final
    # C-MOVE response that movescu waited for.
    arrived = {dcmread(path, stop_before_pixels=True).SOPInstanceUID: path for path in destination.iterdir()}
    assert set(arrived) == expected
    for sop, path in arrived.items():
        if sop == stack.uid(1, 3, 1):
            continue  # JPEG-LS, which storescp does not accept: converted, compared below
        # storescp +B writes what it received as it came: the dataset is the stored one.
        assert dataset_bytes(path) == dataset_bytes(stack.stored(sop)), f"{sop} differs from the stored file"
    converted, stored = dcmread(arrived[stack.uid(1, 3, 1)]), dcmread(stack.stored(stack.uid(1, 3, 1)))
    assert not converted.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(converted.pixel_array, stored.pixel_array)


def _move(
    stack: Stack, destination: str, called: str = "PACSFLOW", study: str | None = None
) -> list[Dataset]:
    ae = AE(ae_title="PYMOVE")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", stack.scp_port, ae_title=called)
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study or stack.uid(1)
    try:
        return [
            status
            for status, _ in assoc.send_c_move(
                identifier, destination, StudyRootQueryRetrieveInformationModelMove
            )
        ]
    finally:
        assoc.release()


@pytest.mark.parametrize("named", ["NOWHERE", "ALPHAONLY"])
def test_an_unknown_destination_is_refused(stack: Stack, named: str) -> None:
    """NOWHERE is not configured; ALPHAONLY is, for the alpha tenant only, and this association's
    is the default tenant."""
    (status,) = _move(stack, named)
    assert status.Status == 0xA801
    assert named in status.ErrorComment


def test_a_retrieval_without_its_unique_key_is_refused(stack: Stack) -> None:
    ae = AE(ae_title="PYMOVE")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", stack.scp_port, ae_title="PACSFLOW")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    try:
        with dicomdata.lenient_writing():  # a wildcard where a UID must be, sent as it is
            identifier.StudyInstanceUID = "*"
            ((status, _),) = list(
                assoc.send_c_move(identifier, "STORESCP", StudyRootQueryRetrieveInformationModelMove)
            )
    finally:
        assoc.release()
    assert status.Status == 0xA900
    assert status.ErrorComment.startswith("StudyInstanceUID must name")


def test_pending_counts_then_the_final_status(stack: Stack, destination: Path) -> None:
    statuses = _move(stack, "STORESCP")
    final = statuses[-1]
    assert final.Status == 0x0000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (8, 0)
    remaining = [s.NumberOfRemainingSuboperations for s in statuses[:-1]]
    assert all(s.Status == 0xFF00 for s in statuses[:-1])
    assert remaining == list(range(7, 0, -1))


def _get(
    stack: Stack, series: str, *, called: str = "PACSFLOW", receive: bool = True
) -> tuple[list[tuple[Dataset, Dataset | None]], list[str]]:
    """A pynetdicom C-GET of ``series``: its responses (with their identifiers) and the instances
    received. ``receive`` False: no storage context is proposed, nothing can be sent back."""
    ae = AE(ae_title="PYGET")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    if receive:
        for sop_class in (CTImageStorage, MRImageStorage):
            ae.add_requested_context(sop_class)
            roles.append(build_role(sop_class, scp_role=True))
    received: list[str] = []

    def on_store(event: Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    assoc = ae.associate(
        "127.0.0.1",
        stack.scp_port,
        ae_title=called,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = stack.uid(1)
    identifier.SeriesInstanceUID = series
    try:
        return list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)), received
    finally:
        assoc.release()


def test_a_get_that_can_send_nothing_is_unable_to_perform_its_sub_operations(stack: Stack) -> None:
    """No storage context proposed: every sub-operation fails, so the final status is 0xA702 (not
    the partial failure 0xB000), listing every instance."""
    responses, received = _get(stack, stack.uid(1, 1), receive=False)
    final, failed = responses[-1]
    assert final.Status == 0xA702
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (0, 4)
    assert failed is not None
    assert set(failed.FailedSOPInstanceUIDList) == {stack.uid(1, 1, n) for n in range(1, 5)}
    assert received == []


def test_a_get_called_as_another_tenant_finds_nothing_of_the_default_tenant(stack: Stack) -> None:
    responses, received = _get(stack, stack.uid(1, 1))
    assert responses[-1][0].Status == 0x0000 and set(received) == {stack.uid(1, 1, n) for n in range(1, 5)}
    responses, received = _get(stack, stack.uid(1, 1), called="ALPHA")
    ((final, _),) = responses
    assert final.Status == 0x0000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (0, 0)
    assert received == []


def _find_alpha(stack: Stack, study: str) -> bool:
    ae = AE(ae_title="PYFIND")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", stack.scp_port, ae_title="ALPHA")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    try:
        statuses = [
            status.Status
            for status, _ in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
        ]
    finally:
        assoc.release()
    return statuses == [0xFF00, 0x0000]


def test_a_move_called_as_a_tenant_reaches_that_tenants_destination(stack: Stack, destination: Path) -> None:
    """ALPHAONLY is refused to the default tenant (above) and accepted for alpha's own study."""
    ds = dicomdata.image(
        CTImageStorage, stack.uid(9), stack.uid(9, 1), stack.uid(9, 1, 1), 1, patient_id="PA",
        patient_name="Alpha^Moved", rows=16, columns=16,
    )  # fmt: skip
    sent = dicomdata.write(ds, stack.folder / f"alpha-{uuid.uuid4().hex}.dcm")
    assert store_one(stack.scp_port, sent, str(ds.file_meta.TransferSyntaxUID), called="ALPHA").Status == 0
    wait_for(lambda: _find_alpha(stack, stack.uid(9)), 60, "the alpha study indexed")
    statuses = _move(stack, "ALPHAONLY", called="ALPHA", study=stack.uid(9))
    final = statuses[-1]
    assert final.Status == 0x0000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 0)
    (arrived,) = destination.iterdir()
    assert dcmread(arrived, stop_before_pixels=True).SOPInstanceUID == stack.uid(9, 1, 1)


def _first_series(stack: Stack) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = stack.uid(1)
    identifier.SeriesInstanceUID = stack.uid(1, 1)
    return identifier


def test_a_get_cancelled_stops_before_its_next_sub_operation(stack: Stack) -> None:
    """The C-CANCEL is sent from the first C-STORE's handler, before its response: the SCP has it
    when that sub-operation ends, sends no other, and answers Cancel with the counts."""
    ae = AE(ae_title="PYGET")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    received: list[str] = []

    def on_store(event: Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) == 1:
            event.assoc.send_c_cancel(7, query_model=StudyRootQueryRetrieveInformationModelGet)
        return 0x0000

    assoc = ae.associate(
        "127.0.0.1",
        stack.scp_port,
        ae_title="PACSFLOW",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    identifier = _first_series(stack)
    try:
        responses = [
            status
            for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet, msg_id=7)
        ]
    finally:
        assoc.release()
    assert [hex(s.Status) for s in responses] == ["0xff00", "0xfe00"]
    final = responses[-1]
    assert final.NumberOfCompletedSuboperations == 1
    assert final.NumberOfRemainingSuboperations == 3
    assert len(received) == 1


def test_a_get_on_a_move_context_is_refused_not_served(stack: Stack) -> None:
    """A faulty peer's C-GET sent on the MOVE context it negotiated (pynetdicom sends it so when
    given the MOVE model)."""
    ae = AE(ae_title="PYGET")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", stack.scp_port, ae_title="PACSFLOW")
    assert assoc.is_established
    identifier = _first_series(stack)
    try:
        responses = [s for s, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelMove)]
    finally:
        assoc.release()
    (response,) = responses
    assert response.Status == 0xA900
    assert "C-GET request on a context of Study Root" in str(response.ErrorComment)
