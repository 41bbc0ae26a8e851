"""A deleted series' metadata files and version stamps go, so that it can be stored and described again."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.models import TenantId, Uid
from pipeline.regeneration import forget, write_fenced
from pipeline.stores.files import StorageLayout

TENANT, STUDY, KEPT, GONE = TenantId("default"), Uid("1.2.3"), Uid("1.2.3.1"), Uid("1.2.3.2")
# Plain strings as version keys, as the index gives them (orjson takes no str subclass as a key).
K, G = str(KEPT), str(GONE)


def _written(tmp_path: Path) -> tuple[StorageLayout, Path]:
    layout = StorageLayout(tmp_path)
    folder = layout.study_metadata_path(TENANT, STUDY).parent / STUDY
    write_fenced(
        folder,
        [
            (layout.series_metadata_path(TENANT, STUDY, KEPT), b"[1]", {K: 4}),
            (layout.series_metadata_path(TENANT, STUDY, GONE), b"[2]", {G: 7}),
            (layout.study_metadata_path(TENANT, STUDY), b"[1,2]", {K: 4, G: 7}),
        ],
    )
    return layout, folder


def test_a_deleted_series_loses_its_files_and_stamps_and_can_be_written_again_from_version_1(
    tmp_path: Path,
) -> None:
    layout, folder = _written(tmp_path)
    forget(layout, TENANT, STUDY, alive=[KEPT])
    assert not (folder / f"{GONE}.json").exists() and not (folder / f"{GONE}.json.gz").exists()
    assert (folder / f"{KEPT}.json").read_bytes() == b"[1]"
    stamps = json.loads((folder / ".versions.json").read_bytes())
    assert stamps == {f"{KEPT}.json": {K: 4}, f"{STUDY}.json": {K: 4}}
    sizes = write_fenced(folder, [(layout.series_metadata_path(TENANT, STUDY, GONE), b"[9]", {G: 1})])
    assert sizes[0] != (0, 0) and (folder / f"{GONE}.json").read_bytes() == b"[9]"


def test_a_deleted_study_loses_its_file_and_folder_and_forgetting_twice_is_harmless(tmp_path: Path) -> None:
    layout, folder = _written(tmp_path)
    forget(layout, TENANT, STUDY, alive=[])
    forget(layout, TENANT, STUDY, alive=[])
    assert not folder.exists()
    assert not layout.study_metadata_path(TENANT, STUDY).exists()
    assert list(tmp_path.rglob("*")) == [tmp_path / TENANT, tmp_path / TENANT / "metadata"]
