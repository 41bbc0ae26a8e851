"""`pacsflow nginx-config`: what it writes, what Debian's nginx makes of it (`nginx -t`), and the
mistakes it refuses."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from egress.proxy.nginx import Proxy, render, write
from pipeline.errors import PacsflowError, SettingsError
from pipeline.settings import Settings, load
from tests.support.nginx import NGINX, require_nginx
from tests.support.services import pacsflow


def _settings(tmp_path: Path, **env: str) -> Settings:
    """Without the viewer: copying it is the integration test's."""
    base = {"PACSFLOW_DATA_DIR": str(tmp_path / "data"), "PACSFLOW_VIEWER": "off"}
    return load({**base, **{f"PACSFLOW_{k.upper()}": v for k, v in env.items()}})


def _nginx_version() -> tuple[int, ...]:
    shown = subprocess.run([str(NGINX), "-v"], capture_output=True, text=True, check=True).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", shown)
    assert found, shown
    return tuple(map(int, found.groups()))


def _check(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(NGINX), "-t", "-c", str(conf)], capture_output=True, text=True, check=False)


def test_debian_nginx_accepts_the_configuration_pacsflow_nginx_config_writes(tmp_path: Path) -> None:
    require_nginx()
    env = {
        "PACSFLOW_DATA_DIR": str(tmp_path / "data"),
        "PACSFLOW_HTTP_ACCEL_REDIRECT": "/_pacsflow/storage/",
        "PACSFLOW_STOW_MAX_REQUEST_BYTES": "123456789",
    }
    out = tmp_path / "nginx"
    args = ["--upstream", "127.0.0.1:9001", "--upstream", "localhost:9002"]
    done = pacsflow("nginx-config", "--out", str(out), *args, "--http-port", "18080", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "nginx.conf")
    text = (out / "nginx.conf").read_text()
    checked = _check(out / "nginx.conf")
    assert checked.returncode == 0, checked.stderr
    assert "[emerg]" not in checked.stderr
    assert "client_max_body_size 123456789;" in text
    assert "server 127.0.0.1:9001 max_fails=1 fail_timeout=10s;" in text
    assert "resolver" not in text
    assert f'alias "{tmp_path}/data/storage/";' in text
    assert "listen 8443 ssl http2;" in text and "listen 18080;" in text


def test_with_a_resolver_the_upstreams_are_resolved_again(tmp_path: Path) -> None:
    conf = write(tmp_path / "nginx", Proxy(("web:8080",), resolver="127.0.0.11"), _settings(tmp_path))
    text = conf.read_text()
    assert "resolver 127.0.0.11 valid=10s ipv6=off;" in text
    assert "server web:8080 max_fails=1 fail_timeout=10s resolve;" in text
    if NGINX.exists() and _nginx_version() >= (1, 27, 3):
        checked = _check(conf)
        assert checked.returncode == 0, checked.stderr


def test_without_the_setting_nginx_has_no_internal_location(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    text = write(tmp_path / "nginx", Proxy(("web:8080",)), settings, viewer=None).read_text()
    assert "internal;" not in text and "X-Served-By" not in text


def test_a_self_signed_certificate_is_made_once_and_kept(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    folder = tmp_path / "nginx"
    write(folder, Proxy(("web:8080",), server_name="pacs.example.org"), settings)
    cert = (folder / "tls" / "cert.pem").read_bytes()
    names = x509.load_pem_x509_certificate(cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert names.value.get_values_for_type(x509.DNSName) == ["pacs.example.org", "localhost"]
    assert (folder / "tls" / "key.pem").stat().st_mode & 0o077 == 0
    write(folder, Proxy(("web:8080",)), settings)
    assert (folder / "tls" / "cert.pem").read_bytes() == cert


def test_a_given_certificate_is_used_as_it_is(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    cert, key = tmp_path / "site.pem", tmp_path / "site.key"
    cert.write_text("certificate")
    key.write_text("key")
    text = write(tmp_path / "nginx", Proxy(("web:8080",), tls_cert=cert, tls_key=key), settings).read_text()
    assert f'ssl_certificate "{cert}";' in text and f'ssl_certificate_key "{key}";' in text
    assert not (tmp_path / "nginx" / "tls").exists()


@pytest.mark.parametrize(
    ("proxy", "said"),
    [
        (lambda: Proxy(()), "at least one --upstream"),
        (lambda: Proxy(("web",)), "HOST:PORT"),
        (lambda: Proxy(("web:99999",)), "HOST:PORT"),
        (lambda: Proxy(("web:8080;evil",)), "HOST:PORT"),
        (lambda: Proxy(("web:8080",), http_port=8443), "give two ports"),
        (lambda: Proxy(("web:8080",), https_port=0), "not a TCP port"),
        (lambda: Proxy(("web:8080",), server_name="a;b"), "--server-name"),
        (lambda: Proxy(("web:8080",), resolver="1.1.1.1; x"), "--resolver"),
        (lambda: Proxy(("web:8080",), tls_cert=Path("/c.pem")), "go together"),
    ],
)
def test_bad_options_are_refused_with_what_is_wrong(proxy: object, said: str) -> None:
    with pytest.raises(PacsflowError, match=re.escape(said)):
        proxy()  # type: ignore[operator]


def test_a_path_nginx_cannot_name_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path, storage_root=str(tmp_path / "a$b"), http_accel_redirect="/_s/")
    with pytest.raises(PacsflowError, match="cannot name a path"):
        render(tmp_path, Proxy(("web:8080",)), settings, tmp_path / "c", tmp_path / "k", None)


@pytest.mark.parametrize("prefix", ["_pacsflow/storage", "/dicomweb/", "/tenants/", "/_p/s"])
def test_the_accel_redirect_prefix_hides_no_route(tmp_path: Path, prefix: str) -> None:
    # An internal location over /dicomweb/ would answer 404 to every DICOMweb request.
    with pytest.raises(SettingsError, match="PACSFLOW_HTTP_ACCEL_REDIRECT"):
        _settings(tmp_path, http_accel_redirect=prefix)


def test_a_valid_accel_redirect_prefix_is_kept(tmp_path: Path) -> None:
    assert _settings(tmp_path, http_accel_redirect=" /_p/s/ ").http_accel_redirect == "/_p/s/"
