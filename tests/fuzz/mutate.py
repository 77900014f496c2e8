"""Hypothesis strategies that damage real inputs the way hostile or broken producers do.

`mutated(seeds)` takes a real sample and applies a few edits: bit flips, byte overwrites,
truncation, deletion, duplication, splices of another sample, insertion of hostile tokens
(quotes, escapes, NULs, line breaks, invalid UTF-8, huge and negative numbers, non-ASCII
digits) and replacement of a number with a huge one. Random inputs alone rarely get past a
parser's first check; mutated real ones reach the code behind it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from hypothesis import strategies as st

HOSTILE = (
    b'"', b"'", b"\\", b'\\"', b"\\x", b"\\xff", b"\\u", b"\\ud800", b"\\U0010ffff",
    b"\\U99999999", b'"\\U99999999"', b'"\\U00110000"', b"\\777", b"\\q",
    b"\0", b"\n", b"\r", b"\r\n", b"\t", b" ", b"  ",
    b"=", b":", b",", b";", b"(", b")", b"[", b"]", b"{", b"}", b"<", b">", b"|", b"&", b"*",
    b"!", b"!!", b"%", b"#", b"@", b"-", b"+", b".", b"/", b"..", b"~",
    b"0", b"-1", b"-0", b"00", b"0x", b"0x1f", b"1e999", b"-1e999", b"NaN", b"inf", b"1_0",
    b"4294967296", b"18446744073709551616", b"99999999999999999999", b"9" * 400,
    b"9" * 5000, "\u00b2".encode(), "\u0663".encode(), "\uff11".encode(),
    b"\xff", b"\xfe\xff", b"\xc3", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
    "\u2028".encode(), "\u0085".encode(), "\ufeff".encode(), b"\x1b[2J", b"\x7f",
    b" (deleted)", b"true", b"null", b"[]", b"{}", b'""', b"&a", b"*a", b"&a [*a]",
    b"!!binary", b"!!python/object", b"!foo", b"---", b"...", b"? ", b"- ",
    b"time=", b"msg=", b"level=ERROR", b"ts", b"kind",
    b"A" * 300,
)

_NUMBER = re.compile(rb"-?\d+")
_OPS = ("flip", "set", "truncate", "insert", "delete", "duplicate", "splice", "number")


_HUGE = (b"9" * 5000, b"99999999999999999999", b"-1", b"-2147483649", b"4294967295", b"0",
         "\u00b2".encode(), "\u0663\u0664".encode())


def mutate(data: bytes, seeds: Sequence[bytes], edits: int, rng: random.Random) -> bytes:
    """`data` with `edits` random edits (pure given `rng`)."""
    out = bytearray(data)
    for _ in range(edits):
        op = rng.choice(_OPS)
        pos = rng.randint(0, len(out))
        if op in ("flip", "set") and out:
            at = min(pos, len(out) - 1)
            out[at] = out[at] ^ (1 << rng.randrange(8)) if op == "flip" else rng.randrange(256)
        elif op == "truncate":
            del out[pos:]
        elif op == "insert":
            out[pos:pos] = rng.choice(HOSTILE)
        elif op == "delete":
            del out[pos : pos + rng.randint(1, 32)]
        elif op == "duplicate":
            out[pos:pos] = out[pos : pos + rng.randint(1, 64)]
        elif op == "splice":
            other = rng.choice(seeds)
            start = rng.randint(0, len(other))
            out[pos:pos] = other[start : start + rng.randint(1, 256)]
        elif op == "number":
            numbers = list(_NUMBER.finditer(out))
            if numbers:
                m = rng.choice(numbers)
                out[m.start() : m.end()] = rng.choice(_HUGE)
    return bytes(out)


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[bytes], max_edits: int = 6) -> bytes:
    """One of `seeds` with 0 to `max_edits` edits.

    The edits come from a seeded `random.Random`, not from one Hypothesis draw each: drawing
    every position and byte made an example six times dearer, and 10,000 examples per parser
    must stay cheap. Hypothesis still shrinks the seed, the sample and the number of edits.
    """
    data = draw(st.sampled_from(seeds))
    edits = draw(st.integers(0, max_edits))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    return mutate(data, seeds, edits, rng)


def as_text(data: bytes) -> str:
    """Bytes as a str parser would get them from a lenient decoder (undecodable bytes kept)."""
    return data.decode("utf-8", "surrogateescape")


def inputs(seeds: Sequence[bytes], *, max_random: int = 2000) -> st.SearchStrategy[bytes]:
    """Mostly mutated real samples, some untouched ones, some random bytes and text."""
    return st.one_of(
        mutated(seeds),
        mutated(seeds, max_edits=20),
        st.sampled_from(seeds),
        st.binary(max_size=max_random),
        st.text(max_size=max_random).map(lambda s: s.encode("utf-8", "surrogatepass")),
    )
