from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import settings
from pipeline.errors import SettingsError


def test_defaults_are_the_documented_ones(tmp_path: Path) -> None:
    loaded = settings.load({"PACSFLOW_DATA_DIR": str(tmp_path)})
    assert loaded.data_dir == tmp_path
    assert loaded.storage_root == tmp_path / "storage"
    assert loaded.scp_port == 11112
    assert loaded.scp_ae_title == "PACSFLOW"
    assert loaded.http_port == 8080
    assert loaded.kafka_partitions == 4
    assert loaded.metadata_window_s == 2.0
    assert loaded.default_tenant == "default"
    assert loaded.scp_tenants == {}
    assert loaded.kafka_bootstrap == ""
    assert loaded.kafka_session_timeout_s is None
    assert loaded.outbox_dir == tmp_path / "outbox"
    assert loaded.viewer == "on"


def test_values_are_parsed() -> None:
    loaded = settings.load(
        {
            "PACSFLOW_SCP_TENANTS": "CT1=hospital_a, MR2=hospital_b",
            "PACSFLOW_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
            "PACSFLOW_KAFKA_SESSION_TIMEOUT_S": "3",
            "PACSFLOW_SCP_EXTRA_SOP_CLASSES": "1.3.12.2.1107.5.9.1",
            "PACSFLOW_PUBLIC_URL": "https://pacs.example.org/",
            "PACSFLOW_STORAGE_ROOT": "/srv/dicom",
        }
    )
    assert loaded.scp_tenants == {"CT1": "hospital_a", "MR2": "hospital_b"}
    assert loaded.kafka_bootstrap == "k1:9092,k2:9092"
    assert loaded.kafka_session_timeout_s == 3.0
    assert loaded.scp_extra_sop_classes == ("1.3.12.2.1107.5.9.1",)
    assert loaded.public_url == "https://pacs.example.org"
    assert loaded.storage_root == Path("/srv/dicom")


def test_the_viewer_is_on_off_or_a_build_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings.load({"PACSFLOW_VIEWER": "OFF"}).viewer == "off"
    assert settings.load({"PACSFLOW_VIEWER": " on "}).viewer == "on"
    monkeypatch.chdir(tmp_path)
    # A folder is made absolute; whether it holds OHIF is the web server's check (the other
    # services read the same settings and need not see the folder).
    assert settings.load({"PACSFLOW_VIEWER": "ohif/dist"}).viewer == str(tmp_path / "ohif" / "dist")


def test_every_bad_value_is_named_with_what_was_expected() -> None:
    with pytest.raises(SettingsError) as caught:
        settings.load(
            {
                "PACSFLOW_SCP_PORT": "eleven",
                "PACSFLOW_KAFKA_PARTITIONS": "0",
                "PACSFLOW_SCP_TENANTS": "CT1",
                "PACSFLOW_DEFAULT_TENANT": "../etc",
                "PACSFLOW_SCP_AE_TITLE": "A_TITLE_FAR_TOO_LONG",
                "PACSFLOW_DATABASE_URL": "mysql://x",
                "PACSFLOW_SCP_PROT": "1",
                "PACSFLOW_METADATA_WINDOW_S": "1.5",
                "PACSFLOW_REDIS_PREFIX": "a b",
            }
        )
    message = str(caught.value)
    for expected in (
        "PACSFLOW_SCP_PORT='eleven': 'eleven' is not a whole number",
        "PACSFLOW_KAFKA_PARTITIONS='0': 0 is outside 1..1024",
        "PACSFLOW_SCP_TENANTS='CT1': 'CT1' is not AE=tenant",
        "PACSFLOW_DEFAULT_TENANT='../etc': tenant is not valid",
        "PACSFLOW_SCP_AE_TITLE='A_TITLE_FAR_TOO_LONG'",
        "PACSFLOW_DATABASE_URL='mysql://x'",
        "PACSFLOW_SCP_PROT is not a pacsflow setting",
        "PACSFLOW_METADATA_WINDOW_S='1.5': '1.5' is not a whole number",
        "PACSFLOW_REDIS_PREFIX='a b'",
    ):
        assert expected in message


def test_env_file_applies_where_the_environment_is_silent(tmp_path: Path) -> None:
    env_file = tmp_path / "pacsflow.env"
    env_file.write_text("# a comment\nPACSFLOW_SCP_PORT=104\nPACSFLOW_HTTP_PORT='9090'\n\n")
    loaded = settings.load({"PACSFLOW_ENV_FILE": str(env_file), "PACSFLOW_HTTP_PORT": "8081"})
    assert loaded.scp_port == 104
    assert loaded.http_port == 8081


def test_unreadable_env_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot be read"):
        settings.load({"PACSFLOW_ENV_FILE": str(tmp_path / "missing.env")})


@pytest.mark.parametrize("wait", ["0.0001", "10", "20"])
def test_a_fetch_wait_the_request_timeout_would_cut_short_is_refused(wait: str) -> None:
    with pytest.raises(SettingsError, match=f"PACSFLOW_KAFKA_FETCH_WAIT_S={wait}.*shorter than the request"):
        settings.load({"PACSFLOW_KAFKA_FETCH_WAIT_S": wait, "PACSFLOW_KAFKA_REQUEST_TIMEOUT_S": "10"})


def test_a_fetch_wait_within_the_request_timeout_is_kept() -> None:
    assert settings.load({"PACSFLOW_KAFKA_FETCH_WAIT_S": "0.05"}).kafka_fetch_wait_s == 0.05
    assert settings.load({}).kafka_fetch_wait_s is None
