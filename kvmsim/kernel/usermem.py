"""The calling process's address space, as the kernel's uaccess helpers see it.

Regions are mapped with a length and a write permission; address 0 is never mapped and every
mapping is followed by an unmapped guard gap.  The kernel side (``get_user``, ``put_user``,
``copy_from_user``, ``copy_to_user``) obeys the permissions and raises :class:`Fault`
exactly where the real helpers would return ``-EFAULT``.  ``read``/``write`` are the
process's own view, for setting up and inspecting a test: they ignore write permission.
"""

from __future__ import annotations

import bisect
import threading

import attrs

from ..uapi import U64_OF, ByteOrder

PAGE_SIZE = 0x1000
ADDRESS_LIMIT = 1 << 64  # a user access reaching past this wraps: access_ok() refuses it
# Below 2**31, so an address fits the C int that CPython 3.11's fcntl.ioctl passes.
MAP_BASE = 0x1000_0000


class Fault(Exception):
    """An access the MMU would refuse; the uaccess helpers turn it into EFAULT."""

    def __init__(self, addr: int, access: str) -> None:
        super().__init__(f"{access} fault at {addr:#x}")
        self.addr = addr
        self.access = access


@attrs.define
class Region:
    start: int
    data: bytearray  # its length never changes
    writable: bool
    end: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.end = self.start + len(self.data)


class NonZeroTail(Exception):
    """``copy_struct_from_user()``'s -E2BIG: the user's struct is longer than the kernel's
    and not zero past it."""

    def __init__(self, addr: int) -> None:
        super().__init__(f"non-zero byte in the struct's tail at or after {addr:#x}")
        self.addr = addr


_WORD = 8  # sizeof(unsigned long) on the 64-bit kernels modelled
_CHUNK = 4096


class UserAccess:
    """The kernel's uaccess helpers over any user memory: ``get_user``/``put_user`` are
    built on ``copy_from_user``/``copy_to_user``, which a memory model supplies."""

    def copy_from_user(self, addr: int, n: int) -> bytes:
        raise NotImplementedError

    def copy_to_user(self, addr: int, data: bytes) -> None:
        raise NotImplementedError

    def get_user_u64(self, addr: int, byteorder: ByteOrder) -> int:
        value: int = U64_OF[byteorder].unpack(self.copy_from_user(addr, 8))[0]
        return value

    def put_user_u64(self, addr: int, value: int, byteorder: ByteOrder) -> None:
        self.copy_to_user(addr, U64_OF[byteorder].pack(value))

    def clear_user(self, addr: int, n: int) -> None:
        self.copy_to_user(addr, bytes(n))

    # include/linux/uaccess.h and lib/usercopy.c: the extensible-struct helpers

    def check_zeroed_user(self, addr: int, n: int) -> bool:
        """Whether ``n`` user bytes are all zero.  Like the kernel it reads word by word
        and stops at the first non-zero word, so a non-zero byte before an unmapped one
        answers False rather than faulting."""
        end = addr + n
        chunk = addr
        while chunk < end:  # a page-sized read at a time; word by word only where one faults
            stop = min(end, (chunk // _CHUNK + 1) * _CHUNK)
            try:
                if any(self.copy_from_user(chunk, stop - chunk)):
                    return not self._nonzero_word_before_fault(chunk, stop)
            except Fault:
                if self._nonzero_word_before_fault(chunk, stop):
                    return False
                raise
            chunk = stop
        return True

    def _nonzero_word_before_fault(self, addr: int, end: int) -> bool:
        word = addr - addr % _WORD
        while word < end:
            lo, hi = max(word, addr), min(word + _WORD, end)
            if any(self.copy_from_user(lo, hi - lo)):  # a Fault here propagates
                return True
            word += _WORD
        return False

    def copy_struct_from_user(self, ksize: int, addr: int, usize: int) -> bytes:
        """``copy_struct_from_user()``: ``ksize`` bytes, zero-filled past a shorter user
        struct; a longer one must be zero past ``ksize`` (:class:`NonZeroTail` otherwise)."""
        size = min(ksize, usize)
        if usize > ksize and not self.check_zeroed_user(addr + size, usize - size):
            raise NonZeroTail(addr + size)
        return self.copy_from_user(addr, size).ljust(ksize, b"\0")

    def copy_struct_to_user(self, addr: int, usize: int, data: bytes) -> None:
        """``copy_struct_to_user()``: clear the user's bytes past the kernel struct, then
        write the interoperable part (``min(ksize, usize)`` bytes)."""
        ksize = len(data)
        size = min(ksize, usize)
        if usize > ksize:
            self.clear_user(addr + size, usize - size)
        self.copy_to_user(addr, data[:size])


class AddressSpace(UserAccess):
    """A sparse set of mapped regions.  map/unmap replace the (sorted) region table as a
    whole under a lock, so a lookup from another thread sees the old table or the new one,
    never half of each."""

    def __init__(self) -> None:
        self._table: tuple[tuple[int, ...], tuple[Region, ...]] = ((), ())  # starts, regions
        self._last: Region | None = None  # the last region found: most accesses hit it again
        self._lock = threading.Lock()

    # -- the process's side ------------------------------------------------

    def map(self, length: int, *, writable: bool = True, data: bytes | None = None) -> int:
        """Map ``length`` bytes (zero-filled, or ``data``) and return the address: the lowest
        free range that fits, so unmapped addresses are reused and stay low."""
        return self.map_parts([(length, writable)], data)

    def map_parts(self, parts: list[tuple[int, bool]], data: bytes | None = None, *, offset: int = 0) -> int:
        """Map consecutive parts, each ``(length, writable)``, with nothing between them (as
        pages of one mapping with different protections: mprotect), ``data`` across them,
        starting ``offset`` bytes into a page (where a program placed its buffer: the kernel
        reads user words at aligned addresses)."""
        length = sum(n for n, _ in parts)
        if length <= 0 or any(n <= 0 for n, _ in parts) or not 0 <= offset < PAGE_SIZE:
            raise ValueError(f"cannot map parts of {[n for n, _ in parts]} bytes at offset {offset}")
        with self._lock:
            pages = -(-(offset + length) // PAGE_SIZE) + 1  # one guard page after every mapping
            start = self._free_range(pages * PAGE_SIZE) + offset
            whole = bytearray(length)
            if data is not None:
                whole[: len(data)] = data[:length]
            new, at = [], start
            for n, writable in parts:
                new.append(Region(at, whole[at - start : at - start + n], writable))
                at += n
            starts, regions = self._table
            i = bisect.bisect(starts, start)
            self._table = (
                (*starts[:i], *(r.start for r in new), *starts[i:]),
                (*regions[:i], *new, *regions[i:]),
            )
        return start

    def unmap(self, addr: int) -> None:
        """Unmap the mapping at ``addr`` (all its parts)."""
        with self._lock:
            starts, regions = self._table
            i = bisect.bisect_left(starts, addr)
            if i == len(starts) or starts[i] != addr:
                raise ValueError(f"no mapping starts at {addr:#x}")
            j = i + 1
            while j < len(regions) and regions[j].start == regions[j - 1].end:  # its further parts
                j += 1
            self._table = (starts[:i] + starts[j:], regions[:i] + regions[j:])
            self._last = None

    def _free_range(self, size: int) -> int:
        """The lowest page-aligned gap of ``size`` bytes between mappings (each mapping keeps
        its guard page), else past the last one."""
        at = MAP_BASE
        for region in self._table[1]:
            if region.start - at >= size:
                return at
            at = max(at, -(-region.end // PAGE_SIZE) * PAGE_SIZE + PAGE_SIZE)
        return at

    def protect(self, addr: int, *, writable: bool) -> None:
        self._region(addr, 1, "protect").writable = writable

    def view(self, addr: int, n: int) -> memoryview:
        """The process's own ``n`` bytes at ``addr``, to read and write in place (a mapping
        never moves or changes size, so the view stays valid while it is mapped)."""
        region = self._region(addr, n, "view")
        off = addr - region.start
        return memoryview(region.data)[off : off + n]

    def read(self, addr: int, n: int) -> bytes:
        region = self._find(addr)
        if region is not None and addr + n <= region.end:  # the usual: within one part
            off = addr - region.start
            return bytes(region.data[off : off + n])
        out, at = bytearray(), addr  # across the parts of one mapping, or a Fault where they end
        while len(out) < n:
            region = self._find(at)
            if region is None:
                raise Fault(at, "read")
            take = min(n - len(out), region.end - at)
            out += region.data[at - region.start : at - region.start + take]
            at += take
        return bytes(out)

    def write(self, addr: int, data: bytes) -> None:
        region = self._region(addr, len(data), "write")
        off = addr - region.start
        region.data[off : off + len(data)] = data

    # -- the kernel's side: arch/powerpc/include/asm/uaccess.h -------------

    def copy_from_user(self, addr: int, n: int) -> bytes:
        """All ``n`` bytes, or :class:`Fault` if any of them is unmapped."""
        return self.read(addr, n)

    def get_user_u64(self, addr: int, byteorder: ByteOrder) -> int:
        region = self._find(addr)
        if region is None or addr + 8 > region.end:  # across parts, or a fault: as copy_from_user
            value: int = U64_OF[byteorder].unpack(self.read(addr, 8))[0]
            return value
        value = U64_OF[byteorder].unpack_from(region.data, addr - region.start)[0]  # unpacked in place
        return value

    def copy_to_user(self, addr: int, data: bytes) -> None:
        """Write ``data``; a fault part-way leaves the bytes before it written, as
        ``__copy_tofrom_user`` does, and raises :class:`Fault`."""
        done = 0
        while done < len(data):
            region = self._find(addr + done)
            if region is None or not region.writable:
                raise Fault(addr + done, "write")
            off = addr + done - region.start
            chunk = min(len(data) - done, region.end - (addr + done))
            region.data[off : off + chunk] = data[done : done + chunk]
            done += chunk

    # -- lookup --------------------------------------------------------------

    def _find(self, addr: int) -> Region | None:
        last = self._last
        if last is not None and last.start <= addr < last.end:
            return last
        starts, regions = self._table
        i = bisect.bisect_right(starts, addr) - 1
        if i < 0:
            return None
        region = regions[i]
        if addr < region.end:
            self._last = region
            return region
        return None

    def _region(self, addr: int, n: int, access: str) -> Region:
        region = self._find(addr)
        if region is None:
            raise Fault(addr, access)
        if addr + n > region.end:
            raise Fault(region.end, access)
        return region
