"""Several modalities at once: parallel dcmtk associations."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import Scp
from tests.support import dicomdata
from tests.support.dicomdata import uid
from tests.support.dimse import require_dcmtk
from tests.support.services import DCMTK, Broker

pytestmark = [pytest.mark.broker, pytest.mark.dcmtk]


def test_four_parallel_storescu_store_200_instances(scp: Scp, broker: Broker, tmp_path: Path) -> None:
    require_dcmtk()
    run = uuid.uuid4().int % 10**12
    batches = []
    for n in range(4):
        datasets = dicomdata.ct_series(uid(run, n), uid(run, n, 1), 50)
        batches.append((datasets, dicomdata.write_all(datasets, tmp_path / f"batch{n}")))

    senders = [
        subprocess.Popen(
            [
                str(DCMTK / "storescu"),
                "-aet",
                f"MOD{n}",
                "-aec",
                "PACSFLOW",
                "-to",
                "30",
                "127.0.0.1",
                str(scp.port),
                *map(str, files),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, (_, files) in enumerate(batches)
    ]
    outputs = [sender.communicate(timeout=240) for sender in senders]

    for sender, (_, err) in zip(senders, outputs, strict=True):
        assert sender.returncode == 0, err
    sops = {ds.SOPInstanceUID for datasets, _ in batches for ds in datasets}
    assert len(sops) == 200
    stored = {p.stem for p in scp.files()}
    assert stored == sops
    records = broker.read("storage_queue", 200, timeout=30, where=lambda v: v["SopInstanceUID"] in sops)
    assert sorted(json.loads(r.value)["SopInstanceUID"] for r in records) == sorted(sops)
