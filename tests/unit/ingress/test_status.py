from __future__ import annotations

import pytest

from ingress.scp.status import StoreStatus, error_comment, status_for
from ingress.scp.tenancy import tenant_for
from pipeline import errors
from pipeline.models import TenantId


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.StorageFull("x"), StoreStatus.OUT_OF_RESOURCES),
        (errors.SopClassMismatch("x"), StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (errors.UnreadableDataset("x"), StoreStatus.CANNOT_UNDERSTAND),
        (errors.MissingAttribute("x"), StoreStatus.MISSING_ATTRIBUTE),
        (errors.InvalidIdentifier("x"), StoreStatus.INVALID_IDENTIFIER),
        (errors.InstanceUidMismatch("x"), StoreStatus.INSTANCE_UID_MISMATCH),
        (errors.StorageError("x"), StoreStatus.PROCESSING_FAILURE),
        (errors.OutboxError("x"), StoreStatus.PROCESSING_FAILURE),
    ],
)
def test_every_failure_has_a_failure_status(error: errors.PacsflowError, status: StoreStatus) -> None:
    assert status_for(error) == status
    assert status != StoreStatus.SUCCESS


def test_error_comment_fits_an_lo() -> None:
    comment = error_comment(ValueError("a\\b\n" + "x" * 100))
    assert len(comment) <= 64
    assert "\\" not in comment and "\n" not in comment


def test_called_ae_title_maps_to_a_tenant() -> None:
    mapping = {"CT1": TenantId("hospital_a")}
    assert tenant_for("CT1", mapping, TenantId("default")) == "hospital_a"
    assert tenant_for("CT1  ", mapping, TenantId("default")) == "hospital_a"
    assert tenant_for("OTHER", mapping, TenantId("default")) == "default"
