"""A real OpenID Connect issuer on a loopback port, for the tests of pacsflow's bearer-token auth and
of the viewer's sign-in.

authlib's authorization server runs the login: the authorization code flow with PKCE (S256, required)
for one public client, a plain HTML login form, ID tokens, refresh tokens, userinfo and RP-initiated
logout. Users, codes and keys live in memory. Tests of the token checks skip the login and mint tokens
of every kind with ``Issuer.token``: expired, not yet valid, for another audience or issuer, signed by
a key the JWKS does not list, or with the public key as an HMAC secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import jwt
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    ClientMixin,
    InvalidRequestError,
    TokenMixin,
    grants,
    list_to_scope,
    scope_to_list,
)
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfoEndpoint
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.rpinitiated import EndSessionEndpoint
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from flask import Flask, Response, request
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

log = logging.getLogger(__name__)

# Signed in through the form: as long as a working day's test run needs, refreshable.
LOGIN_TOKEN_SECONDS = 3600
CODE_SECONDS = 600
# Claims of OpenID Connect itself: a user's `scope` limits what the resource server grants, never
# whether the viewer can sign in at all.
OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

# One key of each kind per generation, so that a token of any asymmetric algorithm pacsflow accepts
# verifies against the JWKS; RSA serves both RS* and PS*.
_GENERATORS: dict[str, Callable[[], PrivateKey]] = {
    "RSA": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "P-256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "P-384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "P-521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "Ed25519": ed25519.Ed25519PrivateKey.generate,
}
_KIND_OF_ALG = {
    **{f"{family}{bits}": "RSA" for family in ("RS", "PS") for bits in (256, 384, 512)},
    "ES256": "P-256",
    "ES384": "P-384",
    "ES512": "P-521",
    "EdDSA": "Ed25519",
}
# The algorithm-confusion attack: HMAC keyed with the issuer's public key PEM, which anyone has.
_HMAC_OF_ALG = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
ALGORITHMS = (*_KIND_OF_ALG, *_HMAC_OF_ALG, "none")
# RFC 7638: the members a key's thumbprint covers.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


@dataclass(frozen=True)
class User:
    password: str
    tenants: list[str] | None = None
    # Limits the scopes a login grants (OpenID Connect's own scopes always pass); None: no limit.
    scope: str | None = None


def default_users() -> dict[str, User]:
    return {"alice": User("alice-password", tenants=["alpha"])}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _jwk(key: PrivateKey, *, private: bool = False) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        value = RSAAlgorithm.to_jwk(key if private else key.public_key(), as_dict=True)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        value = ECAlgorithm.to_jwk(key if private else key.public_key(), as_dict=True)
    else:
        value = OKPAlgorithm.to_jwk(key if private else key.public_key(), as_dict=True)
    value.pop("key_ops", None)  # `use` says it, in the form verifiers expect
    return value


@dataclass(frozen=True)
class SigningKey:
    private: PrivateKey
    kid: str

    @classmethod
    def generate(cls, kind: str) -> SigningKey:
        private = _GENERATORS[kind]()
        public = _jwk(private)
        members = {name: public[name] for name in _THUMBPRINT_MEMBERS[public["kty"]]}
        canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
        return cls(private, _b64url(hashlib.sha256(canonical).digest()))

    def public_jwk(self) -> dict[str, Any]:
        return {**_jwk(self.private), "kid": self.kid, "use": "sig"}

    def private_jwk(self) -> dict[str, Any]:
        return {**_jwk(self.private, private=True), "kid": self.kid, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _generation() -> dict[str, SigningKey]:
    return {kind: SigningKey.generate(kind) for kind in _GENERATORS}


@dataclass(frozen=True)
class _Account:
    """A signed-in user as authlib's grants carry it."""

    name: str
    user: User

    def granted(self, requested: str) -> str:
        if self.user.scope is None:
            return requested
        allowed = set(scope_to_list(self.user.scope)) | OIDC_SCOPES
        return list_to_scope([s for s in scope_to_list(requested) if s in allowed])

    def claims(self, scope: str) -> dict[str, Any]:
        claims: dict[str, Any] = {"sub": self.name}
        if "profile" in scope_to_list(scope):
            claims.update(name=self.name, preferred_username=self.name)
        if self.user.tenants is not None:
            claims["tenants"] = list(self.user.tenants)
        return claims


@dataclass
class _Code(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    account: _Account
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


@dataclass
class _Grant(TokenMixin):
    """What a refresh token, or an access token at userinfo, stands for."""

    client: _Client
    account: _Account
    scope: str
    expires_at: float

    def check_client(self, client: ClientMixin) -> bool:
        return client.get_client_id() == self.client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return max(0, int(self.expires_at - time.time()))

    def is_expired(self) -> bool:
        return time.time() >= self.expires_at

    def is_revoked(self) -> bool:
        return False

    def get_user(self) -> _Account:
        return self.account

    def get_client(self) -> _Client:
        return self.client


class _SameOrigin:
    """Where the end of a session may send the browser: any page of a registered redirect URI's
    origin (the viewer names its start page, not its callback)."""

    def __init__(self, issuer: Issuer) -> None:
        self.issuer = issuer

    def __contains__(self, uri: object) -> bool:
        origins = {_origin(u) for u in self.issuer.redirect_uris}
        return isinstance(uri, str) and _origin(uri) in origins


def _origin(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    return parts.scheme, parts.netloc


class _Client(ClientMixin):
    """The viewer: a public client (no secret), authorization code with PKCE, refresh tokens."""

    def __init__(self, issuer: Issuer) -> None:
        self.issuer = issuer
        self.client_id = issuer.client_id
        self.client_metadata = {"post_logout_redirect_uris": _SameOrigin(issuer)}

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        uris = self.issuer.redirect_uris
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        offered = set(scope_to_list(self.issuer.scopes))
        return list_to_scope([s for s in scope_to_list(scope or "") if s in offered])

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.issuer.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none" if endpoint == "token" else True

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


class _Server(AuthorizationServer):
    issuer: Issuer


class _CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]
    server: _Server

    def save_authorization_code(self, code: str, oauth_request: Any) -> None:
        account: _Account = oauth_request.user
        data = oauth_request.payload.data
        self.server.issuer._codes[code] = _Code(
            code=code,
            client_id=oauth_request.client.get_client_id(),
            redirect_uri=oauth_request.payload.redirect_uri,
            scope=account.granted(oauth_request.scope),
            account=account,
            nonce=data.get("nonce"),
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            auth_time=int(time.time()),
        )

    def query_authorization_code(self, code: str, client: _Client) -> _Code | None:
        found = self.server.issuer._codes.get(code)
        if found is None or found.client_id != client.client_id:
            return None
        return found if time.time() < found.auth_time + CODE_SECONDS else None

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        self.server.issuer._codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: _Code) -> _Account:
        return authorization_code.account


class _GrantGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]
    INCLUDE_NEW_REFRESH_TOKEN = True
    server: _Server

    def authenticate_refresh_token(self, refresh_token: str) -> _Grant | None:
        found = self.server.issuer._refresh.get(refresh_token)
        return found if found is not None and not found.is_expired() else None

    def authenticate_user(self, refresh_token: _Grant) -> _Account:
        return refresh_token.account

    def revoke_old_credential(self, refresh_token: _Grant) -> None:
        refreshes = self.server.issuer._refresh
        for value, record in list(refreshes.items()):
            if record is refresh_token:
                refreshes.pop(value, None)


class _Pkce(CodeChallenge):
    """PKCE with S256 on every authorization request: ``plain`` would hand the verifier to anyone
    who reads the request, and authlib lets a request without a challenge through to the token step."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: 'code_challenge' is missing")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE: only 'code_challenge_method=S256' is accepted")
        super().validate_code_challenge(grant, redirect_uri)


class _OpenIDCode(OpenIDCode):
    def __init__(self, issuer: Issuer) -> None:
        super().__init__(require_nonce=False)
        self.issuer = issuer

    def exists_nonce(self, nonce: str, oauth_request: Any) -> bool:
        return any(code.nonce == nonce for code in list(self.issuer._codes.values()))

    def resolve_client_private_key(self, client: _Client) -> dict[str, Any]:
        return self.issuer._current["RSA"].private_jwk()

    def get_client_algorithm(self, client: _Client) -> str:
        return "RS256"

    def get_encode_header(self, client: _Client) -> dict[str, str]:
        return {"alg": "RS256", "kid": self.issuer.kid}

    def get_client_claims(self, client: _Client) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": self.issuer.url, "aud": client.client_id, "azp": client.client_id, "exp": now + 3600}

    def generate_user_info(self, user: _Account, scope: str) -> dict[str, Any]:
        return user.claims(scope)


class _BearerValidator(BearerTokenValidator):
    def __init__(self, issuer: Issuer) -> None:
        super().__init__()
        self.issuer = issuer

    def authenticate_token(self, token_string: str) -> _Grant | None:
        issuer = self.issuer
        try:
            kid = jwt.get_unverified_header(token_string).get("kid")
            keys = {k.kid: k for generation in issuer._generations for k in generation.values()}
            key = keys[kid].private.public_key()
            claims = jwt.decode(
                token_string, key, algorithms=list(_KIND_OF_ALG), audience=issuer.audience, issuer=issuer.url
            )
        except (jwt.PyJWTError, KeyError):
            return None
        sub = str(claims["sub"])
        account = _Account(sub, issuer.users.get(sub, User("", tenants=claims.get("tenants"))))
        return _Grant(issuer._client, account, str(claims.get("scope", "")), claims["exp"])


class _UserInfo(UserInfoEndpoint):
    def generate_user_info(self, user: _Account, scope: str) -> dict[str, Any]:
        return user.claims(scope)


class _EndSession(EndSessionEndpoint):
    server: _Server

    def get_server_jwks(self) -> dict[str, Any]:
        return self.server.issuer._jwks()

    def get_algorithms(self) -> list[str]:
        return ["RS256"]

    def is_post_logout_redirect_uri_legitimate(self, *args: Any) -> bool:
        return True  # no sessions here to protect: no confirmation page

    def end_session(self, end_session_request: Any) -> None:
        pass


class _QuietRequests(WSGIRequestHandler):
    """Request lines to the logging module at debug, not werkzeug's own handler on stderr; one
    request per connection, so that no browser's idle keep-alive holds a thread at shutdown."""

    protocol_version = "HTTP/1.0"

    def log(self, type: str, message: str, *args: Any) -> None:
        log.log(logging.WARNING if type == "error" else logging.DEBUG, message.rstrip(), *args)


_CORS_PATHS = frozenset({"/.well-known/openid-configuration", "/jwks", "/token", "/userinfo"})

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body><h1>{title}</h1>{body}</body></html>"""


def _login_form(action: str, error: str | None, username: str = "") -> str:
    alert = f'<p role="alert" class="error">{html.escape(error)}</p>' if error else ""
    return _PAGE.format(
        title="Sign in",
        body=f"""{alert}<form method="post" action="{html.escape(action)}">
<label>Username <input name="username" autocomplete="username" value="{html.escape(username)}"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button type="submit">Sign in</button>
</form>""",
    )


class Issuer:
    """An OpenID Connect issuer on 127.0.0.1: bound when made, served by ``with Issuer(...) as issuer:``,
    stopped on leaving the block."""

    def __init__(
        self,
        *,
        audience: str = "pacsflow",
        client_id: str = "pacsflow-viewer",
        redirect_uris: Sequence[str] = (),
        users: Mapping[str, User] | None = None,
        scopes: str = "openid profile dicomweb.read dicomweb.write dicomweb.delete dicomweb.admin",
    ) -> None:
        self.audience = audience
        self.client_id = client_id
        self.users: dict[str, User] = dict(default_users() if users is None else users)
        self.scopes = scopes
        self.jwks_fetches = 0
        self._redirect_uris: list[str] = []
        for uri in redirect_uris:
            self.register_redirect_uri(uri)
        self._lock = threading.Lock()
        # Newest first: [0] signs; the others are listed in the JWKS until dropped by a rotation.
        self._generations: list[dict[str, SigningKey]] = [_generation()]
        self._strays: dict[str, SigningKey] = {}
        self._codes: dict[str, _Code] = {}
        self._refresh: dict[str, _Grant] = {}
        self._client = _Client(self)
        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, self._app(), threaded=True, request_handler=_QuietRequests
        )
        # Leaving the block must not wait on a connection a browser opened and left idle.
        self._server.block_on_close = False
        self.url = f"http://127.0.0.1:{self._server.port}"
        self.jwks_url = self.url + "/jwks"
        self.discovery_url = self.url + "/.well-known/openid-configuration"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="issuer", daemon=True
        )

    def __enter__(self) -> Issuer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def _current(self) -> dict[str, SigningKey]:
        return self._generations[0]

    @property
    def kid(self) -> str:
        return self._current["RSA"].kid

    @property
    def public_pem(self) -> bytes:
        return self._current["RSA"].public_pem()

    @property
    def redirect_uris(self) -> tuple[str, ...]:
        return tuple(self._redirect_uris)

    def register_redirect_uri(self, uri: str) -> None:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
            raise ValueError(f"{uri!r}: a redirect URI is an absolute http(s) URL without a fragment")
        if uri not in self._redirect_uris:
            self._redirect_uris.append(uri)

    def rotate(self, *, keep_old: bool = False) -> str:
        fresh = _generation()
        with self._lock:
            self._generations = [fresh, *(self._generations if keep_old else [])]
        return fresh["RSA"].kid

    def token(
        self,
        *,
        sub: str = "alice",
        scope: str = "dicomweb.read",
        tenants: str | list[str] | None = None,
        aud: str | list[str] | None = None,
        iss: str | None = None,
        expires_in: float = 300,
        not_before: float | None = None,
        client_id: str = "pacsflow-test",
        extra: Mapping[str, object] | None = None,
        key: Literal["current", "unknown"] = "current",
        alg: str = "RS256",
    ) -> str:
        """A signed access token: ``iss`` this issuer, ``aud`` the audience, ``exp`` ``expires_in``
        seconds from now (negative: already expired), ``nbf`` ``not_before`` seconds from now when
        given, ``tenants`` when given; ``extra`` claims last, over the others.

        ``key="unknown"``: a key of the same kind that the JWKS does not list (a kid of the same
        form). ``alg``: RS*/PS* (RSA), ES256/ES384/ES512 (P-256/P-384/P-521), EdDSA (Ed25519), all
        in the JWKS; HS256/HS384/HS512 are the algorithm-confusion attack (HMAC keyed with the RSA
        key's public PEM, ``kid`` the RSA key's); ``none`` is unsigned."""
        if key not in ("current", "unknown"):
            raise ValueError(f"key={key!r}: 'current' or 'unknown'")
        if alg not in ALGORITHMS:
            raise ValueError(f"alg={alg!r}: one of {', '.join(ALGORITHMS)}")
        now = time.time()
        claims: dict[str, Any] = {
            "iss": self.url if iss is None else iss,
            "aud": self.audience if aud is None else aud,
            "sub": sub,
            "scope": scope,
            "iat": int(now),
            "exp": int(now + expires_in),
            "jti": uuid.uuid4().hex,
            "azp": client_id,
            "client_id": client_id,
        }
        if not_before is not None:
            claims["nbf"] = int(now + not_before)
        if tenants is not None:
            claims["tenants"] = tenants if isinstance(tenants, str) else list(tenants)
        claims.update(extra or {})
        signer = self._key(_KIND_OF_ALG.get(alg, "RSA"), unknown=key == "unknown")
        if alg in _KIND_OF_ALG:
            return jwt.encode(claims, signer.private, algorithm=alg, headers={"kid": signer.kid})
        return _unverifiable(claims, alg, signer)

    def _key(self, kind: str, *, unknown: bool) -> SigningKey:
        if not unknown:
            return self._current[kind]
        with self._lock:
            if kind not in self._strays:
                self._strays[kind] = SigningKey.generate(kind)
            return self._strays[kind]

    def _jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for generation in self._generations for k in generation.values()]}

    def _save_token(self, token: Mapping[str, Any], oauth_request: Any) -> None:
        if "refresh_token" in token:
            self._refresh[token["refresh_token"]] = _Grant(
                client=self._client,
                account=oauth_request.user,
                scope=token.get("scope", ""),
                expires_at=time.time() + 24 * 3600,
            )

    def _access_token(self, client: _Client, grant_type: str, user: _Account, scope: str) -> str:
        return self.token(
            sub=user.name,
            scope=scope,
            tenants=user.user.tenants,
            client_id=client.client_id,
            expires_in=LOGIN_TOKEN_SECONDS,
        )

    def _discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "authorization_endpoint": self.url + "/authorize",
            "token_endpoint": self.url + "/token",
            "jwks_uri": self.jwks_url,
            "userinfo_endpoint": self.url + "/userinfo",
            "end_session_endpoint": self.url + "/logout",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "subject_types_supported": ["public"],
            "scopes_supported": scope_to_list(self.scopes),
            "token_endpoint_auth_methods_supported": ["none"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "name", "preferred_username"],
        }

    def _app(self) -> Flask:
        app = Flask(__name__)
        app.config.update(
            OAUTH2_ACCESS_TOKEN_GENERATOR=self._access_token,
            OAUTH2_REFRESH_TOKEN_GENERATOR=True,
            OAUTH2_TOKEN_EXPIRES_IN={
                "authorization_code": LOGIN_TOKEN_SECONDS,
                "refresh_token": LOGIN_TOKEN_SECONDS,
            },
        )
        server = _Server(app, query_client=self._query_client, save_token=self._save_token)
        server.issuer = self
        server.register_grant(_CodeGrant, [_OpenIDCode(self), _Pkce(required=True)])
        server.register_grant(_GrantGrant)
        protector = ResourceProtector()
        protector.register_token_validator(_BearerValidator(self))
        server.register_endpoint(_UserInfo(resource_protector=protector))
        server.register_endpoint(_EndSession)

        @app.get("/.well-known/openid-configuration")
        def discovery() -> dict[str, Any]:
            return self._discovery()

        @app.get("/jwks")
        def jwks() -> dict[str, Any]:
            with self._lock:
                self.jwks_fetches += 1
            return self._jwks()

        @app.get("/favicon.ico")
        def favicon() -> Response:
            # Browsers ask a login page's origin for an icon: none, and no 404 in their console.
            return Response(status=204)

        @app.route("/authorize", methods=["GET", "POST"])
        def authorize() -> Response:
            try:
                grant = server.get_consent_grant(end_user=None)
            except OAuth2Error as error:
                return server.handle_error_response(None, error)
            if request.method == "GET":
                return Response(_login_form(request.full_path, None), mimetype="text/html")
            name = request.form.get("username", "")
            user = self.users.get(name)
            if user is None or not hmac.compare_digest(
                user.password.encode(), request.form.get("password", "").encode()
            ):
                form = _login_form(request.full_path, "Wrong username or password.", name)
                return Response(form, mimetype="text/html")
            response: Response = server.create_authorization_response(
                grant=grant, grant_user=_Account(name, user)
            )
            return response

        @app.post("/token")
        def token() -> Response:
            return server.create_token_response()

        @app.route("/userinfo", methods=["GET", "POST"])
        def userinfo() -> Response:
            return server.create_endpoint_response("userinfo")

        @app.route("/logout", methods=["GET", "POST"])
        def logout() -> Response:
            try:
                ending = server.validate_endpoint_request("end_session")
            except OAuth2Error as error:
                return server.handle_error_response(None, error)
            redirect: Response | None = server.create_endpoint_response("end_session", ending)
            page = _PAGE.format(title="Signed out", body="<p>You are signed out.</p>")
            return redirect or Response(page, mimetype="text/html")

        @app.after_request
        def cors(response: Response) -> Response:
            # The viewer calls these from pacsflow's origin; the login pages are navigations.
            if request.path in _CORS_PATHS:
                response.headers["Access-Control-Allow-Origin"] = "*"
                response.headers["Access-Control-Expose-Headers"] = "WWW-Authenticate"
                if request.method == "OPTIONS":
                    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
                    response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
                    response.headers["Access-Control-Max-Age"] = "600"
            return response

        return app

    def _query_client(self, client_id: str) -> _Client | None:
        return self._client if client_id == self.client_id else None


def _unverifiable(claims: Mapping[str, Any], alg: str, signer: SigningKey) -> str:
    """A token no sound verifier accepts: unsigned, or HMAC-signed with the public key as the secret
    (PyJWT refuses to make either)."""
    header = {"alg": alg, "typ": "JWT", "kid": signer.kid}
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    if alg == "none":
        return signing_input + "."
    mac = hmac.new(signer.public_pem(), signing_input.encode(), _HMAC_OF_ALG[alg])
    return f"{signing_input}.{_b64url(mac.digest())}"
