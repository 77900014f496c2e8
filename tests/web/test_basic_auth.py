"""bcrypt through the host's crypt(3), and the basic-auth check with its cache."""

from __future__ import annotations

import base64
import threading

import pytest

from vgpumon.http.auth import BasicAuth, RateLimiter, basic_credentials
from vgpumon.http.passwords import BcryptHash, bcrypt_problem, check_password

from .conftest import basic, libcrypt_bcrypt


def test_this_host_can_check_bcrypt():
    assert bcrypt_problem() is None


@pytest.mark.parametrize("variant", ["2b", "2y", "2a"])
def test_a_hash_made_by_libcrypt_verifies(variant):
    hashed = BcryptHash.parse(libcrypt_bcrypt(b"correct horse", variant=variant))
    assert check_password(b"correct horse", hashed)
    assert not check_password(b"correct hors", hashed)
    assert not check_password(b"correct horse ", hashed)
    assert not check_password(b"", hashed)


def test_the_openwall_vector_and_the_toolkits_htpasswd_example():
    # crypt_blowfish's published vector, and the hash in the toolkit's docs (password unknown).
    vector = BcryptHash.parse("$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW")
    assert check_password(b"U*U", vector)
    toolkit = BcryptHash.parse("$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG")
    assert (toolkit.variant, toolkit.cost) == ("2y", 10)


def test_utf8_passwords_and_a_nul_byte():
    hashed = BcryptHash.parse(libcrypt_bcrypt("pässwörd".encode()))
    assert check_password("pässwörd".encode(), hashed)
    # C strings end at NUL: "pässwörd\0anything" must not pass as "pässwörd".
    assert not check_password("pässwörd".encode() + b"\0anything", hashed)


@pytest.mark.parametrize(("header", "expected"), [
    (basic("alice", "s3:cret"), (b"alice", b"s3:cret")),  # the first colon splits
    ("basic " + base64.b64encode(b"alice:").decode(), (b"alice", b"")),
    (None, None),
    ("", None),
    ("Bearer abc", None),
    ("Basic !!!!", None),
    ("Basic " + base64.b64encode(b"no colon").decode(), None),
])
def test_basic_credentials_are_parsed_strictly(header, expected):
    assert basic_credentials(header) == expected


class CountingCheck:
    def __init__(self):
        self.calls: list[tuple[bytes, str]] = []

    def __call__(self, password: bytes, hashed: BcryptHash) -> bool:
        self.calls.append((password, hashed.text))
        return check_password(password, hashed)


@pytest.fixture
def alice():
    return {"alice": BcryptHash.parse(libcrypt_bcrypt(b"wonderland"))}


def test_right_wrong_and_unknown(alice):
    auth = BasicAuth(alice)
    assert auth.check(basic("alice", "wonderland"))
    assert not auth.check(basic("alice", "Wonderland"))
    assert not auth.check(basic("bob", "wonderland"))
    assert not auth.check(None)


def test_successes_are_cached_without_plaintext_and_failures_are_not(alice):
    check = CountingCheck()
    auth = BasicAuth(alice, check=check)
    for _ in range(3):
        assert auth.check(basic("alice", "wonderland"))
    assert len(check.calls) == 1  # bcrypt ran once; the next scrapes hit the cache
    for _ in range(2):
        assert not auth.check(basic("alice", "guess"))
    assert len(check.calls) == 3  # a wrong password always pays for bcrypt
    [key] = auth._cache  # the one success
    assert len(key) == 32 and b"wonderland" not in key and b"alice" not in key


def test_unknown_users_cost_a_bcrypt_too(alice):
    check = CountingCheck()
    auth = BasicAuth(alice, check=check)
    assert not auth.check(basic("mallory", "wonderland"))
    [(password, decoy)] = check.calls
    assert password == b"wonderland"
    assert decoy.startswith("$2b$04$")  # the decoy costs what the configured users cost
    assert not auth._cache


def test_the_cache_is_bounded(alice, monkeypatch):
    monkeypatch.setattr(BasicAuth, "CACHE_SIZE", 2)
    # bcrypt reads at most 72 bytes: longer passwords with the right prefix all succeed and
    # would each add an entry; the cache must not grow with them.
    long = "wonderland" + "x" * 70
    auth = BasicAuth({"alice": BcryptHash.parse(libcrypt_bcrypt(long.encode()))})
    for suffix in "abcde":
        assert auth.check(basic("alice", long + suffix))
    assert len(auth._cache) == 2


def test_concurrent_checks_agree(alice):
    auth = BasicAuth(alice)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda p=p: results.append(auth.check(basic("alice", p))))
               for p in ["wonderland", "nope"] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 4 + [True] * 4


def test_rate_limiter_allows_a_burst_then_one_per_interval():
    now = [0.0]
    limiter = RateLimiter(interval=10.0, burst=2, clock=lambda: now[0])
    assert [limiter.allow() for _ in range(3)] == [True, True, False]
    now[0] = 9.0
    assert not limiter.allow()
    now[0] = 10.5
    assert limiter.allow() and not limiter.allow()
    now[0] = 1000.0
    assert [limiter.allow() for _ in range(3)] == [True, True, False]
