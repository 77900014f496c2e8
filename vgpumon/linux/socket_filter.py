"""Classic BPF socket filters (``SO_ATTACH_FILTER``): a program the kernel runs on every
packet before it is queued on the socket, so that what the program drops never wakes the
reader nor costs it a ``recv``.

`Program` assembles the few instructions vgpumon needs (pure, no I/O); `attach` installs one.
Loads with ``BPF_ABS`` read packet words in network byte order: `word` turns a value the
kernel wrote in host order (netlink messages are host-endian) into what such a load yields.
"""

from __future__ import annotations

import array
import socket
import struct
from dataclasses import dataclass, field

SO_ATTACH_FILTER = 26
# The kernel's limit on a classic program's length.
BPF_MAXINSNS = 4096

# Opcode parts (linux/bpf_common.h).
_LD, _LDX, _RET, _JMP, _MISC = 0x00, 0x01, 0x06, 0x05, 0x07
_W, _ABS = 0x00, 0x20
_JA, _JEQ, _K, _X = 0x00, 0x10, 0x00, 0x08
_TAX = 0x00

_INSN = struct.Struct("=HBBI")
# struct sock_fprog: unsigned short len; struct sock_filter *filter (native alignment).
_FPROG = struct.Struct("@HP")

ACCEPT = 0xFFFFFFFF  # keep the whole packet
DROP = 0


def word(value: int) -> int:
    """What ``ld [k]`` yields for a 32-bit word the kernel stored in host byte order."""
    packed = struct.pack("=I", value & 0xFFFFFFFF)
    return int(struct.unpack(">I", packed)[0])


@dataclass
class Program:
    """A classic BPF program under construction. Jumps are relative and at most 255
    instructions long, so programs keep every branch local."""

    code: list[tuple[int, int, int, int]] = field(default_factory=list)

    def load_word(self, offset: int) -> Program:
        """A = the packet's 32-bit word at `offset` (network byte order: see `word`)."""
        self.code.append((_LD | _W | _ABS, 0, 0, offset))
        return self

    def a_to_x(self) -> Program:
        self.code.append((_MISC | _TAX, 0, 0, 0))
        return self

    def skip_if(self, value: int, count: int = 1) -> Program:
        """Skip the next `count` instructions when A == value."""
        self.code.append((_JMP | _JEQ | _K, count, 0, value))
        return self

    def skip_unless(self, value: int, count: int = 1) -> Program:
        """Skip the next `count` instructions when A != value."""
        self.code.append((_JMP | _JEQ | _K, 0, count, value))
        return self

    def skip_if_x(self, count: int = 1) -> Program:
        """Skip the next `count` instructions when A == X."""
        self.code.append((_JMP | _JEQ | _X, count, 0, 0))
        return self

    def jump(self, count: int) -> Program:
        """Skip the next `count` instructions."""
        self.code.append((_JMP | _JA, 0, 0, count))
        return self

    def ret(self, verdict: int) -> Program:
        self.code.append((_RET | _K, 0, 0, verdict))
        return self

    def encoded(self) -> bytes:
        if not 0 < len(self.code) <= BPF_MAXINSNS:
            raise ValueError(f"a classic BPF program has 1 to {BPF_MAXINSNS} instructions, "
                             f"not {len(self.code)}")
        return b"".join(_INSN.pack(*insn) for insn in self.code)


def attach(sock: socket.socket, program: Program) -> None:
    """Install `program` on `sock`, replacing any filter it had (raises OSError)."""
    code = array.array("B", program.encoded())
    address, _length = code.buffer_info()
    # The kernel copies the instructions during the call; `code` outlives it.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    _FPROG.pack(len(program.code), address))
    del code

