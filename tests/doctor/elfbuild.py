"""Synthetic ELF images for parser tests: any class, byte order and machine, tightly packed.

The layout is ELF header, program headers (PT_LOAD over the whole file, PT_DYNAMIC, PT_NOTE),
dynamic entries, string table, notes, with nothing after the last region, so every proper
prefix of an image cuts into something the parser has to read.
"""

from __future__ import annotations

import struct

from vgpumon.linux import elf


def synth_elf(
    *,
    elf_class: int = 64,
    order: str = "<",
    machine: int = elf.EM_X86_64,
    e_type: int = elf.ET_DYN,
    osabi: int = 0,
    soname: str | None = None,
    needed: tuple[str, ...] = (),
    rpath: str | None = None,
    runpath: str | None = None,
    flags_1: int | None = None,
    build_id: bytes | None = None,
    base: int = 0x400000,
) -> bytes:
    is64 = elf_class == 64
    ehsize, phentsize, dynsize = (64, 56, 16) if is64 else (52, 32, 8)
    strtab = bytearray(b"\0")

    def add(s: str) -> int:
        at = len(strtab)
        strtab.extend(s.encode() + b"\0")
        return at

    dyn: list[tuple[int, int]] = [(elf.DT_NEEDED, add(n)) for n in needed]
    for tag, value in ((elf.DT_SONAME, soname), (elf.DT_RPATH, rpath), (elf.DT_RUNPATH, runpath)):
        if value is not None:
            dyn.append((tag, add(value)))
    if flags_1 is not None:
        dyn.append((elf.DT_FLAGS_1, flags_1))
    nphdr = 3 if build_id is not None else 2
    dyn_off = ehsize + nphdr * phentsize
    dyn_len = (len(dyn) + 3) * dynsize  # + STRTAB, STRSZ, NULL
    str_off = dyn_off + dyn_len
    dyn += [(elf.DT_STRTAB, base + str_off), (elf.DT_STRSZ, len(strtab)), (elf.DT_NULL, 0)]
    note = b""
    note_off = str_off + len(strtab)
    if build_id is not None:
        note_off = (note_off + 3) & ~3
        pad = (-len(build_id)) % 4
        note = struct.pack(order + "III", 4, len(build_id), elf.NT_GNU_BUILD_ID) + b"GNU\0"
        note += build_id + b"\0" * pad
    total = note_off + len(note) if note else str_off + len(strtab)

    def phdr(p_type: int, off: int, size: int, align: int) -> bytes:
        if is64:
            return struct.pack(
                order + "IIQQQQQQ", p_type, 4, off, base + off, base + off, size, size, align
            )
        return struct.pack(
            order + "IIIIIIII", p_type, off, base + off, base + off, size, size, 4, align
        )

    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if order == "<" else 2, 1, osabi, 0])
    ident += b"\0" * 7
    # e_entry, e_phoff and e_shoff are 8 bytes in ELF64; e_shentsize is 64 or 40
    header = "HHIQQQIHHHHHH" if is64 else "HHIIIIIHHHHHH"
    head = struct.pack(order + header, e_type, machine, 1, 0, ehsize, 0, 0, ehsize, phentsize,
                       nphdr, 64 if is64 else 40, 0, 0)
    out = bytearray(ident + head)
    out += phdr(elf.PT_LOAD, 0, total, 0x1000)
    out += phdr(elf.PT_DYNAMIC, dyn_off, dyn_len, 8)
    if note:
        out += phdr(elf.PT_NOTE, note_off, len(note), 4)
    for tag, val in dyn:
        out += struct.pack(order + ("qQ" if is64 else "iI"), tag, val)
    out += strtab
    out += b"\0" * (note_off - len(out)) if note else b""
    out += note
    assert len(out) == total
    return bytes(out)


def bytes_reader(data: bytes):
    return lambda offset, size: data[offset : offset + size]
