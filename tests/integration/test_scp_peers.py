"""Known peers: with PACSFLOW_SCP_PEERS set, dcmtk's tools are turned away at association unless
their calling AE title is listed for the tenant of the called one, from its network."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests.conftest import Scp, ScpFactory
from tests.support import dicomdata
from tests.support.dicomdata import uid
from tests.support.dimse import echoscu, require_dcmtk, storescu
from tests.support.services import Broker, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.dcmtk]

PEERS = "TESTSCU=default,MR1=hospital_b,LOCAL@127.0.0.0/8=default,FARAWAY@10.99.0.0/16=default"
CALLING_REFUSED = "Calling AE Title Not Recognized"
CALLED_REFUSED = "Called AE Title Not Recognized"


@pytest.fixture
def scp(start_scp: ScpFactory, broker: Broker) -> Scp:
    require_dcmtk()
    # Not the fixture's own wait: its C-ECHO probe is no known peer.
    started = start_scp(broker.bootstrap, wait=False, scp_peers=PEERS, scp_tenants="MRAE=hospital_b")
    return listening(started)


def listening(scp: Scp) -> Scp:
    wait_for(
        lambda: scp.service.events("scp_listening") or not scp.service.alive(), 60, "`pacsflow scp` to listen"
    )
    assert scp.service.alive(), scp.service.log_path.read_text()[-3000:]
    return scp


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def rejection(scp: Scp, calling: str) -> dict[str, object]:
    """The SCP's log line of the rejection of ``calling``."""
    found = wait_for(
        lambda: [e for e in scp.service.events("association_rejected") if e["calling_ae"] == calling],
        10,
        f"the rejection of {calling} in the log",
    )
    assert len(found) == 1, found
    event: dict[str, object] = found[0]
    return event


def one_instance(folder: Path) -> tuple[Path, Dataset]:
    run = uuid.uuid4().int % 10**12
    ds = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 1)[0]
    return dicomdata.write(ds, folder / "one.dcm"), ds


def stored(scp: Scp, tenant: str, ds: Dataset) -> Path:
    path: Path = scp.storage_root / tenant / ds.StudyInstanceUID / ds.SeriesInstanceUID
    return path / f"{ds.SOPInstanceUID}.dcm"


def both_rejections(scp: Scp) -> list[dict[str, object]]:
    """The two ``association_rejected`` events (C-ECHO's and C-STORE's), once both are logged."""
    events: list[dict[str, object]] = wait_for(
        lambda: (
            len(scp.service.events("association_rejected")) == 2
            and scp.service.events("association_rejected")
        ),
        10,
        "both rejections in the log",
    )
    return events


def test_an_unknown_calling_ae_is_rejected_at_association(scp: Scp, tmp_path: Path) -> None:
    source, ds = one_instance(tmp_path)

    echo = echoscu(scp.port, calling="STRANGER")
    store = storescu(scp.port, [source], calling="STRANGER")

    assert echo.returncode != 0 and CALLING_REFUSED in output(echo), output(echo)
    assert store.returncode != 0 and CALLING_REFUSED in output(store), output(store)
    assert "Association Rejected" in output(store)
    assert not stored(scp, "default", ds).exists()
    assert not scp.files()
    found = both_rejections(scp)
    for event in found:
        assert {k: event[k] for k in ("address", "calling_ae", "called_ae", "reason")} == {
            "address": "127.0.0.1",
            "calling_ae": "STRANGER",
            "called_ae": "PACSFLOW",
            "reason": "calling AE title not recognised",
        }


def test_a_known_peer_echoes_and_stores(scp: Scp, tmp_path: Path) -> None:
    source, ds = one_instance(tmp_path)

    assert echoscu(scp.port, calling="TESTSCU").returncode == 0
    result = storescu(scp.port, [source], calling="TESTSCU")

    assert result.returncode == 0, output(result)
    assert stored(scp, "default", ds).is_file()
    assert not scp.service.events("association_rejected")


def test_a_peer_is_known_for_its_tenant_only(scp: Scp, tmp_path: Path) -> None:
    source, ds = one_instance(tmp_path)

    elsewhere = storescu(scp.port, [source], calling="MR1", called="PACSFLOW")
    assert elsewhere.returncode != 0 and CALLING_REFUSED in output(elsewhere), output(elsewhere)
    assert rejection(scp, "MR1")["called_ae"] == "PACSFLOW"

    own = storescu(scp.port, [source], calling="MR1", called="MRAE")
    assert own.returncode == 0, output(own)
    assert stored(scp, "hospital_b", ds).is_file()
    assert not stored(scp, "default", ds).exists()


def test_a_called_ae_title_pacsflow_does_not_answer_to_is_rejected(scp: Scp, tmp_path: Path) -> None:
    source, _ = one_instance(tmp_path)

    echo = echoscu(scp.port, called="NOSUCHAE", calling="TESTSCU")
    store = storescu(scp.port, [source], called="NOSUCHAE", calling="TESTSCU")

    assert echo.returncode != 0 and CALLED_REFUSED in output(echo), output(echo)
    assert store.returncode != 0 and CALLED_REFUSED in output(store), output(store)
    assert not scp.files()
    events = both_rejections(scp)
    assert {(e["called_ae"], e["reason"]) for e in events} == {("NOSUCHAE", "called AE title not recognised")}


def test_a_peer_outside_its_network_is_rejected(scp: Scp) -> None:
    inside = echoscu(scp.port, calling="LOCAL")
    outside = echoscu(scp.port, calling="FARAWAY")

    assert inside.returncode == 0, output(inside)
    assert outside.returncode != 0 and CALLING_REFUSED in output(outside), output(outside)
    event = rejection(scp, "FARAWAY")
    assert (event["address"], event["reason"]) == ("127.0.0.1", "calling AE title not recognised")
