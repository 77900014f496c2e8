"""Request admission for the exporter: HTTP basic auth over bcrypt hashes, and a rate limit.

Both are built from the web config (`vgpumon.http.webconfig`) and used by the HTTP server's
thread and its worker (bcrypt checks) concurrently; neither does I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from vgpumon.http.passwords import BcryptHash, check_password

REALM = "vgpumon"
CHALLENGE = f'Basic realm="{REALM}"'


def basic_credentials(authorization: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) from an ``Authorization: Basic …`` value; None if it is not one."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    return user, password


class BasicAuth:
    """Checks basic-auth credentials against bcrypt hashes, remembering recent successes.

    bcrypt is slow by design, and Prometheus sends the same credentials on every scrape, so
    a success is cached (as the exporter toolkit does). The cache key is an HMAC of user,
    password and hash under a key that lives only in this object: the cache never holds a
    password, nor a fast hash of one that could be attacked offline. Failures are never
    cached. Unknown users cost a bcrypt computation too, so response times do not tell which
    users exist. Only one bcrypt runs at a time (as in the toolkit): a flood of bad
    passwords queues up instead of taking every CPU, and cached users never wait for it.
    """

    CACHE_SIZE = 256

    def __init__(self, users: Mapping[str, BcryptHash],
                 check: Callable[[bytes, BcryptHash], bool] = check_password):
        self._users = {name.encode(): hashed for name, hashed in users.items()}
        cost = min((h.cost for h in users.values()), default=10)
        self._decoy = BcryptHash(f"$2b${cost:02d}$" + "C" * 21 + "." + "A" * 31, "2b", cost)
        self._check = check
        self._secret = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()

    @property
    def users(self) -> tuple[str, ...]:
        return tuple(sorted(name.decode() for name in self._users))

    def check(self, authorization: str | None) -> bool:
        """True if the ``Authorization`` header value names a user with the right password."""
        credentials = basic_credentials(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self._users.get(user)
        key = self._cache_key(user, password, hashed or self._decoy)
        if hashed is not None and self._cached(key):
            return True
        with self._bcrypt_lock:
            matches = self._check(password, hashed or self._decoy)
        if hashed is None or not matches:
            return False
        self._remember(key)
        return True

    def check_cached(self, authorization: str | None) -> bool | None:
        """`check` where it needs no bcrypt: True for remembered credentials, False for a
        header that carries none; None when only `check` can tell (it may take a while)."""
        credentials = basic_credentials(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self._users.get(user)
        if hashed is not None and self._cached(self._cache_key(user, password, hashed)):
            return True
        return None

    def _cache_key(self, user: bytes, password: bytes, hashed: BcryptHash) -> bytes:
        message = b"\0".join([len(user).to_bytes(4, "big") + user, hashed.text.encode(),
                              password])
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def _cached(self, key: bytes) -> bool:
        with self._cache_lock:
            if key not in self._cache:
                return False
            self._cache.move_to_end(key)
            return True

    def _remember(self, key: bytes) -> None:
        with self._cache_lock:
            self._cache[key] = None
            self._cache.move_to_end(key)
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)


class RateLimiter:
    """A token bucket: `burst` requests at once, then one per `interval` seconds."""

    def __init__(self, interval: float, burst: int,
                 clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst),
                               self._tokens + (now - self._last) / self.interval)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False
