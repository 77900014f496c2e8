r"""Regular expressions of the configuration, checked for catastrophic backtracking.

Python's `re` backtracks, and holds the GIL while it does: a pattern whose cost explodes on
some input stops the whole daemon, HTTP included, for as long as one search runs, and the
input is what another process chose (its comm, exe and command line). `analyze` reads the
parsed pattern (``re._parser``, the parser `re.compile` itself uses) and finds the degree of
the polynomial its worst-case search cost grows with, or an exponential shape:

- exponential and cubic or worse: the loader rejects the pattern with the key and line;
- quadratic (``ollama.*serve``): accepted, searched in the first `QUADRATIC_LIMIT` characters
  only (`search_limit`);
- linear: searched in the first `LINEAR_LIMIT` characters (all that is read of a command
  line, `vgpumon.linux.procfs.CMDLINE_LIMIT`).

The rules (docs/configuration.md#patterns) are conservative: they may call a pattern worse
than it is, never better.

1. **Nested repeats** (exponential): a group repeated more than once whose iterations can
   split the same text in more than one way, i.e. a repeat inside it can give characters
   back to the next iteration: ``(a+)+``, ``(.*)*``, ``(\w+\s?)+``, ``(?:.*x){2}``.
   ``(\d+\.)+`` is fine (each iteration ends at its dot).
2. **Ambiguous alternatives in a repeat** (exponential): an unbounded repeat of a group with
   alternatives that can start with the same character: ``(a|ab)*``; and any repeat of
   something that can match nothing: ``(a?)*``, ``(?:)*``, ``(?=x)+``.
3. **Chained repeats** (one degree each): an unbounded repeat followed by something that
   can fail runs over its whole run each time the search gets to it; that multiplies with
   the choices of an earlier unbounded repeat (or, unanchored, of the search's moving start)
   whose run it can cover back to. ``x.*y`` is quadratic unanchored (the search
   tries every ``x``, and each ``.*`` runs to the end), linear as ``\Ax.*y``;
   ``.*x.*y`` is cubic. ``--port \d+ `` is linear: a run of digits cannot contain the
   ``--port `` before it.

Possessive repeats (``a++``), atomic groups (``(?>…)``) and lookarounds never give back what
they matched, so repeats inside them are no choice for what follows (they still cost their
run each time they are reached: ``a++b`` is quadratic unanchored).
"""

from __future__ import annotations

import functools
import re

# The parser `re.compile` uses (and its constants): private, but stable in substance since
# Python 3.0 (sre_parse), and the only exact source for the structure of a pattern. No stubs.
import re._constants as _c  # type: ignore[import-not-found]
import re._parser as _parser  # type: ignore[import-not-found]
from dataclasses import dataclass
from typing import Any

# A repeat whose maximum exceeds its minimum by this much is as bad as an unbounded one.
UNBOUNDED = 64
# How much of the input a pattern is searched in, by the degree of its cost. 64 KiB is all
# that is read of a command line. On 1 KiB of hostile input a quadratic pattern costs a few
# ms (a repeated group like ([^a])+s, which re runs slowly, up to about 60 ms); on 64 KiB,
# seconds to minutes.
LINEAR_LIMIT = 64 * 1024
QUADRATIC_LIMIT = 1024

# Earlier defaults that deployed files carry verbatim, and their linear equivalents.
# "(ollama runner|…).*--model" is quadratic: on a cmdline full of "ollama runner " and no
# --model, the search tries each one and runs .* to the end each time. The replacement finds
# the first program name once; it matches the same strings without a newline (every
# cmdline Ollama starts; tests/core/test_patterns.py checks it on generated ones).
RUNNER = r"(?s)\A(?>.*?(?:ollama runner|ollama-runner|ollama_llama_server|llama-server)).*--model"
LEGACY: dict[str, str] = {
    r"(ollama runner|ollama_llama_server|llama-server).*--model": RUNNER,
    # The linear default before era A's `ollama-runner` was added.
    r"(?s)\A(?>.*?(?:ollama runner|ollama_llama_server|llama-server)).*--model": RUNNER,
}


@dataclass(frozen=True)
class Verdict:
    degree: int  # of the polynomial the worst-case search cost grows with
    problem: str | None = None  # why it is rejected (exponential, or degree 3 and up)


NESTED = ("a repeated group whose iterations can split the same text in more than one way (a "
          "repeat inside a repeat, like (a+)+ or (.*)*): its cost grows exponentially with the "
          "input; make the inner repeat possessive (a++) or atomic ((?>…)), or rewrite it")
EMPTY = ("a repeat of something that can match nothing (like (a?)*, (?:)* or (?=x)+): re "
         "retries such a repeat in many ways, its cost can grow exponentially; repeat only "
         "what matches at least one character")
AMBIGUOUS = ("alternatives that can start with the same character inside an unbounded repeat "
             "(like (a|ab)*): its cost grows exponentially with the input; make the "
             "alternatives start differently, or the repeat possessive ((…)*+)")
CHAINED = ("unbounded repeats in a row that can match the same text (like .*x.*y, or x.*y.*z "
           "unanchored): its cost grows with the input to the power {degree}; anchor it "
           "(\\A…), find the first part once with an atomic group ((?s)\\A(?>.*?x).*y), or "
           "make a repeat possessive (.*+)")


def analyze(pattern: str, flags: int = 0) -> Verdict:
    """The cost class of `pattern`, a valid `re` pattern (compiled with `flags`)."""
    try:
        tree = _parser.parse(pattern, flags)
        flags = tree.state.flags
        items = list(tree)
        ignorecase = bool(flags & _c.SRE_FLAG_IGNORECASE) or _local_ignorecase(items)
        analysis = _Analysis(ignorecase=ignorecase)
        start = [] if _anchored(items, flags) else [_Open(ALL, 1)]
        analysis.sequence(items, start, rest_can_fail=False)
    except RecursionError:
        return Verdict(3, "nested too deeply to be checked for backtracking")
    degree = max(analysis.degree, 0 if _anchored(items, flags) else 1)
    if analysis.problem is not None:
        return Verdict(degree, analysis.problem)
    if degree > 2:
        return Verdict(degree, CHAINED.format(degree=degree))
    return Verdict(degree)


def problem(pattern: str) -> str | None:
    """Why the loader rejects `pattern`, or None."""
    return analyze(pattern).problem


@functools.lru_cache(maxsize=256)
def search_limit(pattern: re.Pattern[str]) -> int:
    """How many leading characters of a command line (comm, exe) `pattern` is searched in."""
    return LINEAR_LIMIT if analyze(pattern.pattern, pattern.flags).degree <= 1 else QUADRATIC_LIMIT


def _anchored(items: list[Any], flags: int) -> bool:
    if not items or items[0][0] is not _c.AT:
        return False
    where = items[0][1]
    return bool(where is _c.AT_BEGINNING_STRING
                or (where is _c.AT_BEGINNING and not flags & _c.SRE_FLAG_MULTILINE))


def _local_ignorecase(items: Any) -> bool:
    """Whether a group turns on (?i:…) somewhere (then every set is case-folded)."""
    for op, av in items:
        if op is _c.SUBPATTERN and av[1] & _c.SRE_FLAG_IGNORECASE:
            return True
        if any(_local_ignorecase(sub) for sub in _children(op, av)):
            return True
    return False


def _children(op: Any, av: Any) -> list[Any]:
    """The sub-patterns of one parsed item."""
    if op is _c.SUBPATTERN:
        return [av[3]]
    if op is _c.ATOMIC_GROUP:
        return [av]
    if op is _c.BRANCH:
        return list(av[1])
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
        return [av[2]]
    if op in (_c.ASSERT, _c.ASSERT_NOT):
        return [av[1]]
    if op is _c.GROUPREF_EXISTS:
        return [sub for sub in (av[1], av[2]) if sub]
    return []


# -- character sets -------------------------------------------------------------------------

@dataclass(frozen=True)
class Chars:
    """A set of characters, exact for ASCII; beyond ASCII only which of four kinds it may
    hold: decimal digits, other word characters, whitespace, the rest (`_KINDS`)."""

    ascii: int = 0  # bit c: character c (0-127)
    kinds: int = 0  # bit k: some non-ASCII character of kind k

    def __or__(self, other: Chars) -> Chars:
        return Chars(self.ascii | other.ascii, self.kinds | other.kinds)

    def __invert__(self) -> Chars:
        return Chars(~self.ascii & _ASCII_ALL, ~self.kinds & _KINDS_ALL)

    def overlaps(self, other: Chars) -> bool:
        return bool(self.ascii & other.ascii or self.kinds & other.kinds)


_ASCII_ALL = (1 << 128) - 1
DIGIT, WORD, SPACE, OTHER = 1, 2, 4, 8  # the kinds of non-ASCII characters
_KINDS_ALL = DIGIT | WORD | SPACE | OTHER
ALL = Chars(_ASCII_ALL, _KINDS_ALL)
NONE = Chars()


def _ascii(test: Any) -> int:
    return sum(1 << c for c in range(128) if test(chr(c)))


# Exact, as `re` decides them for str patterns: \d is str.isdecimal, \s str.isspace, \w
# str.isalnum or "_" (Python's _sre.c).
_CATEGORIES: dict[str, Chars] = {
    "DIGIT": Chars(_ascii(str.isdecimal), DIGIT),
    "SPACE": Chars(_ascii(str.isspace), SPACE),
    "WORD": Chars(_ascii(lambda c: c.isalnum() or c == "_"), DIGIT | WORD),
}
_LETTERS = _ascii(str.isalpha)


def _kind(code: int) -> int:
    char = chr(code)
    if char.isdecimal():
        return DIGIT
    if char.isalnum():
        return WORD
    if char.isspace():
        return SPACE
    return OTHER


def _one(code: int) -> tuple[Chars, Chars]:
    """(surely in it, perhaps in it) for one character."""
    if code < 128:
        exact = Chars(1 << code)
        return exact, exact
    return NONE, Chars(0, _kind(code))


def _range(low: int, high: int) -> tuple[Chars, Chars]:
    ascii_bits = sum(1 << c for c in range(low, min(high, 127) + 1))
    if high < 128:
        return Chars(ascii_bits), Chars(ascii_bits)
    if high - max(low, 128) < 4096:
        kinds = 0
        for code in range(max(low, 128), high + 1):
            kinds |= _kind(code)
    else:
        kinds = _KINDS_ALL
    return Chars(ascii_bits), Chars(ascii_bits, kinds)


def _category(code: Any) -> tuple[Chars, Chars]:
    name = str(code).removeprefix("CATEGORY_").removeprefix("UNI_").removeprefix("LOC_")
    if name in _CATEGORIES:
        return _CATEGORIES[name], _CATEGORIES[name]
    if name.startswith("NOT_") and name[4:] in _CATEGORIES:
        return ~_CATEGORIES[name[4:]], ~_CATEGORIES[name[4:]]
    return NONE, ALL  # LINEBREAK and the like: not worth modelling


def _fold(chars: Chars) -> Chars:
    """An upper bound of `chars` under IGNORECASE: ASCII letters of either case, and a letter
    on one side of ASCII may match one on the other (the Kelvin sign matches k)."""
    ascii_bits = chars.ascii
    for c in range(65, 91):
        if ascii_bits & (1 << c) or ascii_bits & (1 << (c + 32)):
            ascii_bits |= (1 << c) | (1 << (c + 32))
    kinds = chars.kinds
    if ascii_bits & _LETTERS:
        kinds |= WORD
    if kinds & WORD:
        ascii_bits |= _LETTERS
    return Chars(ascii_bits, kinds)


# -- the analysis ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Open:
    """A repeat that can still give characters back to what follows it (or, with chain 1 and
    every character, the search's moving start)."""

    chars: Chars
    chain: int  # the degree its backtracking has reached
    copy: int = 0  # which unrolled iteration it is in (the nested-repeat check)
    # What must have been matched since, one set per item that cannot be empty: a later
    # repeat whose run cannot cross one of them does not chain with this one.
    since: frozenset[Chars] = frozenset()


class _Analysis:
    def __init__(self, *, ignorecase: bool, copies: bool = False):
        self.ignorecase = ignorecase
        self.copies = copies  # checking two unrolled iterations of a repeated group
        self.copy = 0
        self.compounds = False  # (copies) a repeat of copy 2 chains onto one of copy 1
        self.degree = 0
        self.problem: str | None = None

    # What an item can consume (an upper bound), what it can start with, whether it can match
    # nothing, whether it can fail.

    def charset(self, op: Any, av: Any) -> Chars:
        if op is _c.LITERAL:
            chars = _one(av)[1]
        elif op is _c.NOT_LITERAL:
            chars = ~_one(av)[0]
        elif op is _c.IN:
            return self.in_bounds(av)[1]
        else:  # ANY, and anything unforeseen
            return ALL
        return _fold(chars) if self.ignorecase else chars

    def in_bounds(self, items: Any) -> tuple[Chars, Chars]:
        """(surely in it, perhaps in it) for a character class."""
        lower, upper = NONE, NONE
        negate = False
        for op, av in items:
            if op is _c.NEGATE:
                negate = True
                continue
            if op is _c.LITERAL:
                sure, perhaps = _one(av)
            elif op in (_c.RANGE, _c.RANGE_UNI_IGNORE):
                sure, perhaps = _range(av[0], av[1])
            elif op is _c.CATEGORY:
                sure, perhaps = _category(av)
            else:
                sure, perhaps = NONE, ALL
            lower, upper = lower | sure, upper | perhaps
        if self.ignorecase:
            upper = _fold(upper)
        if negate:
            return ~upper, ~lower
        return lower, upper

    def chars(self, items: Any) -> Chars:
        return _union(self.item_chars(op, av) for op, av in items)

    def item_chars(self, op: Any, av: Any) -> Chars:
        if op in (_c.LITERAL, _c.NOT_LITERAL, _c.ANY, _c.IN):
            return self.charset(op, av)
        if op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
            return NONE
        if op is _c.SUBPATTERN:
            return self.chars(av[3])
        if op is _c.ATOMIC_GROUP:
            return self.chars(av)
        if op is _c.BRANCH:
            return _union(self.chars(alt) for alt in av[1])
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
            return self.chars(av[2]) if av[1] > 0 else NONE
        if op is _c.GROUPREF_EXISTS:
            return self.chars(av[1]) | (self.chars(av[2]) if av[2] else NONE)
        return ALL

    def first(self, items: Any) -> tuple[Chars, bool]:
        """The characters a match of `items` can start with, and whether it can be empty."""
        found = NONE
        for op, av in items:
            chars, empty = self.item_first(op, av)
            found |= chars
            if not empty:
                return found, False
        return found, True

    def item_first(self, op: Any, av: Any) -> tuple[Chars, bool]:
        if op in (_c.LITERAL, _c.NOT_LITERAL, _c.ANY, _c.IN):
            return self.charset(op, av), False
        if op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
            return NONE, True
        if op is _c.SUBPATTERN:
            return self.first(av[3])
        if op is _c.ATOMIC_GROUP:
            return self.first(av)
        if op is _c.BRANCH:
            firsts = [self.first(alt) for alt in av[1]]
            return _union(f for f, _ in firsts), any(e for _, e in firsts)
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
            if av[1] == 0:
                return NONE, True
            chars, empty = self.first(av[2])
            return chars, empty or av[0] == 0
        if op is _c.GROUPREF_EXISTS:
            yes = self.first(av[1])
            no = self.first(av[2]) if av[2] else (NONE, True)
            return yes[0] | no[0], yes[1] or no[1]
        return ALL, True  # a backreference: anything, or nothing

    def can_fail(self, op: Any, av: Any) -> bool:
        if op is _c.SUBPATTERN:
            return any(self.can_fail(o, a) for o, a in av[3])
        if op is _c.ATOMIC_GROUP:
            return any(self.can_fail(o, a) for o, a in av)
        if op is _c.BRANCH:
            return all(any(self.can_fail(o, a) for o, a in alt) for alt in av[1])
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
            return bool(av[0] > 0 and any(self.can_fail(o, a) for o, a in av[2]))
        if op is _c.GROUPREF_EXISTS:
            return bool(av[2]) and any(self.can_fail(o, a) for o, a in av[1])
        return True

    # The walk: which repeats are still open after each item, and the degree they reach.

    def sequence(self, items: Any, open_: list[_Open], *, rest_can_fail: bool) -> list[_Open]:
        items = list(items)
        fails = [False] * len(items) + [rest_can_fail]
        for index in range(len(items) - 1, -1, -1):
            fails[index] = fails[index + 1] or self.can_fail(*items[index])
        for index, (op, av) in enumerate(items):
            open_ = self.item(op, av, open_, rest_can_fail=fails[index + 1])
        return open_

    def survivors(self, open_: list[_Open], op: Any, av: Any) -> list[_Open]:
        """The open repeats whose run the match of an item can lie in."""
        _, empty = self.item_first(op, av)
        if empty:
            return open_
        consumed = self.item_chars(op, av)
        return [_Open(o.chars, o.chain, o.copy, o.since | {consumed})
                for o in open_ if o.chars.overlaps(consumed)]

    def item(self, op: Any, av: Any, open_: list[_Open], *, rest_can_fail: bool) -> list[_Open]:
        if op is _c.SUBPATTERN:
            return self.sequence(av[3], open_, rest_can_fail=rest_can_fail)
        # An atomic group or a lookaround gives nothing back once matched: the repeats inside
        # it close at its end. They still run over the text each time the search reaches
        # them, so what follows the group decides whether that costs.
        if op is _c.ATOMIC_GROUP:
            self.sequence(av, open_, rest_can_fail=rest_can_fail)
            return self.survivors(open_, op, av)
        if op in (_c.ASSERT, _c.ASSERT_NOT):  # a negative one fails when its body matches
            self.sequence(av[1], open_, rest_can_fail=rest_can_fail or op is _c.ASSERT_NOT)
            return open_
        if op is _c.BRANCH:
            return _merge([self.sequence(alt, open_, rest_can_fail=rest_can_fail)
                           for alt in av[1]])
        if op is _c.GROUPREF_EXISTS:
            return _merge([self.sequence(av[1], open_, rest_can_fail=rest_can_fail),
                           self.sequence(av[2] or [], open_, rest_can_fail=rest_can_fail)])
        if op is _c.POSSESSIVE_REPEAT:
            low, high, body = av
            if high >= 2 and self.problem is None and self.first(body)[1]:
                self.problem = EMPTY
            self.sequence(body, open_, rest_can_fail=rest_can_fail or high >= 2)
            if rest_can_fail and high - low >= UNBOUNDED and not self.copies:
                self.scan(list(body), open_, backtracks=False)
            return self.survivors(open_, op, av)
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
            return self.repeat(op, av, open_, rest_can_fail=rest_can_fail)
        return self.survivors(open_, op, av)

    def repeat(self, op: Any, av: Any, open_: list[_Open], *,
               rest_can_fail: bool) -> list[_Open]:
        low, high, body = av
        body = list(body)
        loops = high >= 2
        if loops and not self.copies:
            self.check_loop(body, unbounded=high - low >= UNBOUNDED)
        inner = self.sequence(body, open_, rest_can_fail=rest_can_fail or loops)
        result = _merge([self.survivors(open_, op, av), inner])
        counted = high - low >= UNBOUNDED or (self.copies and high > low)
        if not counted or not rest_can_fail:
            return result  # bounded, or the match succeeds once it gets here
        return _merge([result, [self.scan(body, open_, backtracks=True)]])

    def scan(self, body: list[Any], open_: list[_Open], *, backtracks: bool) -> _Open:
        """An unbounded repeat that something after it can make fail runs over its whole run
        each time the search gets to it: one degree more than the choices it is tried for
        (earlier repeats that can give it characters, the search's moving start)."""
        first, empty = self.first(body)
        starts = self.chars(body) if empty else first
        run = self.chars(body)
        chained = [o for o in open_ if o.chars.overlaps(starts)
                   and all(need.overlaps(run) for need in o.since)]
        if backtracks and self.copies and self.copy == 2 and any(o.copy == 1 for o in chained):
            self.compounds = True
        chain = 1 + max((o.chain for o in chained), default=0)
        self.degree = max(self.degree, chain)
        return _Open(run, chain, self.copy)

    def check_loop(self, body: list[Any], *, unbounded: bool) -> None:
        """Rules 1 and 2 for a group that repeats."""
        if self.problem is not None:
            return
        unrolled = _Analysis(ignorecase=self.ignorecase, copies=True)
        unrolled.copy = 1
        open_ = unrolled.sequence(body, [], rest_can_fail=True)
        unrolled.copy = 2
        unrolled.sequence(body, open_, rest_can_fail=True)
        if self.first(body)[1]:
            self.problem = EMPTY
        elif unrolled.compounds:
            self.problem = NESTED
        elif unbounded and self.ambiguous_branch(body):
            self.problem = AMBIGUOUS

    def ambiguous_branch(self, items: Any) -> bool:
        for op, av in items:
            if op is _c.BRANCH:
                seen = NONE
                for alt in av[1]:
                    first, empty = self.first(alt)
                    if empty or first.overlaps(seen):
                        return True
                    seen |= first
                if any(self.ambiguous_branch(alt) for alt in av[1]):
                    return True
            elif op in (_c.SUBPATTERN, _c.MAX_REPEAT, _c.MIN_REPEAT) and any(
                    self.ambiguous_branch(sub) for sub in _children(op, av)):
                return True
        return False


def _union(sets: Any) -> Chars:
    result = NONE
    for chars in sets:
        result |= chars
    return result


def _merge(lists: list[list[_Open]]) -> list[_Open]:
    """One entry per repeat (the same repeat reached along several paths keeps only what
    was matched since on all of them), so the list stays as short as the pattern."""
    merged: dict[tuple[Chars, int, int], frozenset[Chars]] = {}
    for entries in lists:
        for entry in entries:
            key = (entry.chars, entry.chain, entry.copy)
            merged[key] = merged[key] & entry.since if key in merged else entry.since
    return [_Open(chars, chain, copy, since) for (chars, chain, copy), since in merged.items()]
