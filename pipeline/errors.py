"""Errors raised inside pacsflow.

Code inside raises these; only the edges (SCP handlers, HTTP middleware, agents) turn them into a
DICOM status, an HTTP status or a dead-letter record. Every message names the bad value and, where
there is one, the fix.
"""


class PacsflowError(Exception):
    """Base of every error pacsflow raises on purpose."""


class SettingsError(PacsflowError):
    """One or more settings are invalid; the message lists each one."""


class InvalidIdentifier(PacsflowError):
    """A UID or tenant id that must never reach a path."""


class RejectedInstance(PacsflowError):
    """A received instance that cannot be stored as it is; nothing was written."""


class UnreadableDataset(RejectedInstance):
    """The bytes are not a complete DICOM dataset (truncated, malformed)."""


class MissingAttribute(RejectedInstance):
    """A required attribute (a UID) is absent or empty."""


class SopClassMismatch(RejectedInstance):
    """The dataset's SOP Class UID is not the one the transfer was negotiated for."""


class InstanceUidMismatch(RejectedInstance):
    """The dataset's SOP Instance UID is not the one the request announced."""


class StudyMismatch(RejectedInstance):
    """The dataset's Study Instance UID is not the study a request stores into (STOW-RS
    ``/studies/{study}``)."""


class StorageError(PacsflowError):
    """Writing to the storage root failed; nothing partial was left behind."""


class StorageUnavailable(PacsflowError):
    """The storage root cannot be read now (not mounted, an I/O error, no permission): the reader
    waits for it rather than judging the files it could not read."""


class StorageFull(StorageError):
    """The storage root (or the outbox) has no space left."""


class OutboxError(PacsflowError):
    """The durable outbox could not be opened or written."""


class ChildFailed(PacsflowError):
    """A child process of `pacsflow dev` did not start or answer in time."""
