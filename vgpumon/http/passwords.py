"""bcrypt password hashes, checked with the host's crypt(3) through ctypes.

The web config's `basic_auth_users` hold bcrypt hashes (``htpasswd -nBC 10``). Rather than a
new dependency, vgpumon calls libxcrypt, the crypt(3) of Debian ≥ 10, Ubuntu ≥ 20.04,
RHEL/Rocky/Alma ≥ 8, Fedora and Arch (package ``libcrypt1`` / ``libxcrypt``), which implements
bcrypt in all three spellings (``$2a$``, ``$2b$``, ``$2y$``; the same algorithm for ASCII and
UTF-8 passwords). Whether the host's library really does is not assumed: `bcrypt_problem()`
runs the published Openwall test vector once, and the web config is refused if it fails.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hmac
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

MIN_COST = 4
MAX_COST = 31
VARIANTS = ("2a", "2b", "2y")

_HASH = re.compile(r"\$(?P<variant>2[a-z])\$(?P<cost>\d\d)\$(?P<rest>[./A-Za-z0-9]{53})")

# Openwall's crypt_blowfish test vector (wrapper.c): "U*U" with this salt, cost 5.
_VECTOR_PASSWORD = b"U*U"
_VECTOR_SALT = "05$CCCCCCCCCCCCCCCCCCCCC."
_VECTOR_CHECKSUM = "E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"

# libxcrypt's struct crypt_data is 32 KiB; glibc's old one 128 KiB. crypt_rn is told the
# size; crypt_r is not, so it gets room for the largest.
_CRYPT_RN_DATA = 32768
_CRYPT_R_DATA = 256 * 1024


@dataclass(frozen=True)
class BcryptHash:
    """A well-formed bcrypt hash (``$2y$10$`` + 22 salt + 31 checksum characters)."""

    text: str = field(repr=False)  # a secret in the toolkit's terms: kept out of logs
    variant: str
    cost: int

    @classmethod
    def parse(cls, text: str) -> BcryptHash:
        """The hash in `text`; ValueError with an operator-facing reason if it is not one."""
        match = _HASH.fullmatch(text)
        if match is None:
            shown = text if len(text) <= 12 else text[:12] + "…"
            raise ValueError(
                f"expected a bcrypt hash like $2y$10$ followed by 53 characters "
                f"(htpasswd -nBC 10 \"\" | tr -d ':\\n'), got {shown!r}"
            )
        variant = match["variant"]
        if variant not in VARIANTS:
            raise ValueError(f"bcrypt variant ${variant}$ is not accepted "
                             f"(use $2b$ or $2y$; $2a$ also works)")
        cost = int(match["cost"])
        if not MIN_COST <= cost <= MAX_COST:
            raise ValueError(f"bcrypt cost must be {MIN_COST} to {MAX_COST}, got {cost}")
        return cls(text, variant, cost)


class _Crypt:
    """One re-entrant entry point into the host's crypt(3): crypt_rn, else crypt_r."""

    def __init__(self, library: ctypes.CDLL):
        if hasattr(library, "crypt_rn"):
            function = library.crypt_rn
            function.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
            self._call: Callable[[bytes, bytes], bytes | None] = self._rn(function)
        elif hasattr(library, "crypt_r"):
            function = library.crypt_r
            function.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
            self._call = self._r(function)
        else:
            raise OSError("the library has neither crypt_rn nor crypt_r")
        function.restype = ctypes.c_char_p

    @staticmethod
    def _rn(function: Callable[..., bytes | None]) -> Callable[[bytes, bytes], bytes | None]:
        def call(phrase: bytes, setting: bytes) -> bytes | None:
            data = ctypes.create_string_buffer(_CRYPT_RN_DATA)
            return function(phrase, setting, data, _CRYPT_RN_DATA)
        return call

    @staticmethod
    def _r(function: Callable[..., bytes | None]) -> Callable[[bytes, bytes], bytes | None]:
        def call(phrase: bytes, setting: bytes) -> bytes | None:
            data = ctypes.create_string_buffer(_CRYPT_R_DATA)  # zeroed: data->initialized = 0
            return function(phrase, setting, data)
        return call

    def hash(self, phrase: bytes, setting: bytes) -> bytes | None:
        """crypt(phrase, setting), or None where crypt(3) failed (it may return "*0")."""
        result = self._call(phrase, setting)
        if not result or result.startswith(b"*"):
            return None
        return result


_lock = threading.Lock()
_loaded: _Crypt | None = None
_problem: str | None = None
_tested = False


def _load_library() -> _Crypt:
    names: list[str | None] = ["libcrypt.so.1", "libcrypt.so.2"]
    found = ctypes.util.find_library("crypt")
    if found and found not in names:
        names.append(found)
    names.append(None)  # the C library itself (musl has crypt_r in libc)
    errors = []
    for name in names:
        try:
            return _Crypt(ctypes.CDLL(name))
        except OSError as err:
            errors.append(f"{name or 'libc'}: {err}")
    raise OSError("; ".join(errors))


def _self_test(crypt: _Crypt) -> str | None:
    for variant in VARIANTS:
        setting = f"${variant}${_VECTOR_SALT}"
        expected = (setting + _VECTOR_CHECKSUM).encode()
        if crypt.hash(_VECTOR_PASSWORD, setting.encode()) != expected:
            return f"its crypt(3) does not compute ${variant}$ bcrypt hashes correctly"
        if crypt.hash(b"U*V", setting.encode()) == expected:
            return "its crypt(3) returned the same hash for two passwords"
    return None


def bcrypt_problem() -> str | None:
    """None when this host can check bcrypt hashes; otherwise why not (for the operator)."""
    global _loaded, _problem, _tested
    with _lock:
        if not _tested:
            _tested = True
            try:
                crypt = _load_library()
            except OSError as err:
                _problem = f"no usable crypt(3) library ({err})"
            else:
                _problem = _self_test(crypt)
                _loaded = crypt if _problem is None else None
            if _problem is not None:
                _problem = (f"this host cannot check bcrypt passwords: {_problem}; install "
                            f"libxcrypt (Debian/Ubuntu: libcrypt1, RHEL/Fedora: libxcrypt)")
        return _problem


def check_password(password: bytes, hashed: BcryptHash) -> bool:
    """True if `password` matches `hashed`. Slow on purpose (the hash's cost); thread-safe."""
    if bcrypt_problem() is not None or _loaded is None:
        return False
    if b"\0" in password:
        return False  # crypt(3) would stop at the NUL and check only the prefix
    result = _loaded.hash(password, hashed.text.encode())
    return result is not None and hmac.compare_digest(result, hashed.text.encode())
