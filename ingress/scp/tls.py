"""The DICOM TLS port's server context (PS3.15 B.9 and BCP 195: TLS 1.2 or later)."""

from __future__ import annotations

import ssl

from pipeline.errors import PacsflowError
from pipeline.settings import Settings


def server_context(settings: Settings) -> ssl.SSLContext:
    """The context of ``PACSFLOW_SCP_TLS_CERT``/``_KEY``; with ``PACSFLOW_SCP_TLS_CA``, a client
    certificate signed by one of its CAs is required of every peer."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.scp_tls_cert, settings.scp_tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise PacsflowError(
            f"cannot use the DICOM TLS certificate {settings.scp_tls_cert} with the key "
            f"{settings.scp_tls_key} ({_why(exc)}): check PACSFLOW_SCP_TLS_CERT and PACSFLOW_SCP_TLS_KEY "
            "(PEM files, the key unencrypted and matching the certificate)"
        ) from exc
    if settings.scp_tls_ca:
        try:
            context.load_verify_locations(cafile=settings.scp_tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise PacsflowError(
                f"cannot read the client CAs {settings.scp_tls_ca} ({_why(exc)}): check PACSFLOW_SCP_TLS_CA "
                "(a PEM file of CA certificates)"
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
