"""DELETE of an instance, a series and a study through the pipeline, against real processes: QIDO-RS,
metadata, frames, files and the Doris records agree afterwards; `pacsflow reconcile` brings nothing
back; the same instance stored again after its deletion is stored, indexed and described again."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import query
from tests.support import dicomdata
from tests.support.dicomdata import uid
from tests.support.dimse import require_dcmtk, storescu
from tests.support.services import Broker, pacsflow, read_topic, wait_for
from tests.support.stack import on_a_new_database

pytestmark = [pytest.mark.broker, pytest.mark.dcmtk]


@dataclass
class Stack:
    base: str
    dsn: str
    storage: Path
    scp_port: int
    bootstrap: str
    folder: Path

    def get(self, path: str, **params: str) -> requests.Response:
        return requests.get(f"{self.base}/dicomweb{path}", params=params, timeout=10)

    def delete(self, path: str, tenant: str | None = None) -> requests.Response:
        prefix = f"/tenants/{tenant}/dicomweb" if tenant else "/dicomweb"
        return requests.delete(f"{self.base}{prefix}{path}", timeout=10)


@pytest.fixture(scope="module")
def stack(broker: Broker, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_dcmtk()
    tmp = tmp_path_factory.mktemp("delete")
    with on_a_new_database(broker.bootstrap, redis_url, tmp, web={"PACSFLOW_VIEWER": "off"}) as s:
        yield Stack(s.base, s.dsn, tmp / "storage", s.scp_port, broker.bootstrap, tmp)


def count(dsn: str, sql: str, *args: Any) -> int:
    return int(query(dsn, sql, *args)[0]["n"])


def instances_of(dsn: str, study: str) -> int:
    return count(dsn, "SELECT count(*)::int AS n FROM dicom_instance_meta WHERE study_uid = $1", study)


def metadata_current(dsn: str, study: str) -> bool:
    return (
        count(
            dsn,
            "SELECT count(*)::int AS n FROM dicom_json_meta WHERE study_uid = $1 AND json_status <> 1",
            study,
        )
        == 0
        and count(dsn, "SELECT count(*)::int AS n FROM dicom_json_meta WHERE study_uid = $1", study) > 0
    )


def sops_in(answer: requests.Response) -> set[str]:
    if answer.status_code == 204:
        return set()
    assert answer.status_code == 200, answer.text
    return {item["00080018"]["Value"][0] for item in answer.json()}


def metadata_sops(stack: Stack, path: str) -> set[str] | None:
    answer = stack.get(f"{path}/metadata")
    if answer.status_code == 404:
        return None
    assert answer.status_code == 200, answer.text
    return {item["00080018"]["Value"][0] for item in answer.json()}


def send_study(stack: Stack, run: int, folder: Path) -> tuple[str, str, str, list[Any], list[Any]]:
    study, first, second = uid(run, 1), uid(run, 1, 1), uid(run, 1, 2)
    a = dicomdata.ct_series(study, first, 3)
    b = dicomdata.ct_series(study, second, 2)
    files = dicomdata.write_all(a + b, folder)
    result = storescu(stack.scp_port, files)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: instances_of(stack.dsn, study) == 5, 60, "5 instances indexed")
    wait_for(lambda: metadata_current(stack.dsn, study), 60, "the study's metadata files")
    return study, first, second, a, b


def test_delete_instance_series_and_study_everything_agrees_and_nothing_comes_back(
    stack: Stack, tmp_path: Path
) -> None:
    run = uuid.uuid4().int % 10**12
    study, first, second, a, b = send_study(stack, run, tmp_path / "send")
    doomed_sop = a[0].SOPInstanceUID
    instance = f"/studies/{study}/series/{first}/instances/{doomed_sop}"
    doomed_file = stack.storage / "default" / study / first / f"{doomed_sop}.dcm"
    assert doomed_file.is_file()
    assert stack.get(f"{instance}/frames/1").status_code == 200

    # An instance.
    answer = stack.delete(instance)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["instances"] == 1
    assert body["series"] == [{"SeriesInstanceUID": first, "SOPInstanceUIDs": [doomed_sop]}]
    wait_for(lambda: instances_of(stack.dsn, study) == 4, 30, "the instance's row to go")
    wait_for(lambda: metadata_current(stack.dsn, study), 30, "the series' metadata to be rebuilt")
    left_in_first = {ds.SOPInstanceUID for ds in a[1:]}
    assert not doomed_file.exists()
    assert sops_in(stack.get(f"/studies/{study}/series/{first}/instances")) == left_in_first
    assert metadata_sops(stack, f"/studies/{study}/series/{first}") == left_in_first
    assert doomed_sop not in (metadata_sops(stack, f"/studies/{study}") or set())
    assert stack.get(f"{instance}/frames/1").status_code == 404
    assert stack.get(instance).status_code == 404
    assert stack.delete(instance).status_code == 404  # nothing of it is left to delete
    series_row = query(
        stack.dsn, "SELECT series_related_instances AS n FROM dicom_state_meta WHERE series_uid = $1", first
    )
    assert series_row[0]["n"] == 2

    # A series.
    answer = stack.delete(f"/studies/{study}/series/{second}")
    assert answer.status_code == 202, answer.text
    assert answer.json()["instances"] == 2
    wait_for(lambda: instances_of(stack.dsn, study) == 2, 30, "the series' rows to go")
    wait_for(lambda: metadata_current(stack.dsn, study), 30, "the study's metadata to be rebuilt")
    assert not (stack.storage / "default" / study / second).exists()  # its folder went with its files
    metadata_folder = stack.storage / "default" / "metadata" / study
    assert not (metadata_folder / f"{second}.json").exists()
    assert not (metadata_folder / f"{second}.json.gz").exists()
    assert metadata_sops(stack, f"/studies/{study}/series/{second}") is None
    assert metadata_sops(stack, f"/studies/{study}") == left_in_first
    series_found = stack.get(f"/studies/{study}/series").json()
    assert [s["0020000E"]["Value"][0] for s in series_found] == [first]

    # The study.
    answer = stack.delete(f"/studies/{study}")
    assert answer.status_code == 202, answer.text
    wait_for(lambda: instances_of(stack.dsn, study) == 0, 30, "the study's rows to go")
    assert not (stack.storage / "default" / study).exists()
    assert not metadata_folder.exists()
    assert not (stack.storage / "default" / "metadata" / f"{study}.json").exists()
    assert metadata_sops(stack, f"/studies/{study}") is None
    assert sops_in(stack.get("/instances", StudyInstanceUID=study)) == set()
    assert stack.get("/studies", StudyInstanceUID=study).status_code in (200, 204)
    assert not stack.get("/studies", StudyInstanceUID=study).content.strip(b"[]")
    assert (
        count(stack.dsn, "SELECT count(*)::int AS n FROM dicom_state_meta WHERE study_uid = $1", study) == 0
    )
    assert count(stack.dsn, "SELECT count(*)::int AS n FROM dicom_json_meta WHERE study_uid = $1", study) == 0

    # Doris is told: every instance and both series are records with deleted = 1.
    all_sops = {ds.SOPInstanceUID for ds in a + b}
    images = asyncio.run(
        read_topic(
            stack.bootstrap,
            "dicom_image_queue",
            5,
            30,
            where=lambda v: v["sop_uid"] in all_sops and v["deleted"] == 1,
        )
    )
    assert {json.loads(r.value)["sop_uid"] for r in images} == all_sops
    states = asyncio.run(
        read_topic(
            stack.bootstrap,
            "dicom_state_queue",
            2,
            30,
            where=lambda v: v["study_uid"] == study and v["deleted"] == 1,
        )
    )
    assert {json.loads(r.value)["series_uid"] for r in states} == {first, second}

    # Reconcile finds no file to bring back.
    env = {
        "PACSFLOW_KAFKA_BOOTSTRAP": stack.bootstrap,
        "PACSFLOW_DATABASE_URL": stack.dsn,
        "PACSFLOW_DATA_DIR": str(tmp_path / "reconcile"),
        "PACSFLOW_STORAGE_ROOT": str(stack.storage),
    }
    result = pacsflow("reconcile", env=env)
    assert result.returncode == 0, result.stderr
    assert "re-published (file not indexed): 0" in result.stdout
    assert "rows whose file is gone: 0" in result.stdout
    assert instances_of(stack.dsn, study) == 0

    # Stored again after its deletion: stored, indexed and in fresh metadata files.
    again = dicomdata.write_all(a[:1], tmp_path / "again")
    assert storescu(stack.scp_port, again).returncode == 0
    wait_for(lambda: instances_of(stack.dsn, study) == 1, 30, "the instance stored again")
    wait_for(lambda: metadata_current(stack.dsn, study), 30, "its metadata files")
    assert doomed_file.is_file()
    assert metadata_sops(stack, f"/studies/{study}/series/{first}") == {doomed_sop}
    series_file = stack.storage / "default" / "metadata" / study / f"{first}.json"
    assert {item["00080018"]["Value"][0] for item in json.loads(series_file.read_bytes())} == {doomed_sop}


def test_delete_of_what_the_tenant_does_not_have_is_404_and_bad_uids_400(
    stack: Stack, tmp_path: Path
) -> None:
    run = uuid.uuid4().int % 10**12
    study, *_ = send_study(stack, run, tmp_path / "send")
    other = stack.delete(f"/studies/{study}", tenant="other")
    assert other.status_code == 404 and "tenant other has no study" in other.json()["error"]
    assert stack.delete(f"/studies/{uid(run, 9)}").status_code == 404
    assert stack.delete(f"/studies/{study}/series/{uid(run, 9, 9)}").status_code == 404
    assert stack.delete("/studies/1.2.x").status_code == 400
    assert instances_of(stack.dsn, study) == 5  # nothing of it was touched
    preflight = requests.options(
        f"{stack.base}/dicomweb/studies/{study}",
        headers={"Origin": "http://viewer.test", "Access-Control-Request-Method": "DELETE"},
        timeout=10,
    )
    assert "DELETE" in preflight.headers["Access-Control-Allow-Methods"]
