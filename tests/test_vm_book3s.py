"""The VM ioctls QEMU's start-up asks besides the compat query: kvm_arch_vm_ioctl's Book3S cases
(powerpc.c, book3s_rtas.c, book3s_64_mmu_radix.c, book3s_hv.c, book3s_64_mmu_hv.c:
KVM_PPC_GET_CPU_CHAR, KVM_PPC_GET_RMMU_INFO, KVM_PPC_RTAS_DEFINE_TOKEN, KVM_PPC_ALLOCATE_HTAB,
KVM_PPC_CONFIGURE_V3_MMU) and kvm_main's memory slots (KVM_SET_USER_MEMORY_REGION and ...2),
parametrized over every host whose kernel makes a VM."""

from __future__ import annotations

import errno

import attrs
import pytest
from test_vcpu import VM_HOSTS, Guest, _overridden, errno_of, guest, one_reg, vm_types

from kvmsim import Kernel
from kvmsim.kernel import hostfs, profile
from kvmsim.kernel.profile import ProfileError
from kvmsim.uapi import (
    KVM_CAP_PPC_GET_CPU_CHAR,
    KVM_CAP_PPC_GET_PVINFO,
    KVM_CAP_PPC_MMU_RADIX,
    KVM_CAP_PPC_RTAS,
    KVM_CAP_PPC_SMT,
    KVM_CAP_USER_MEMORY2,
    KVM_DIRTY_LOG,
    KVM_GET_DIRTY_LOG,
    KVM_IRQ_LINE,
    KVM_IRQ_LINE_STATUS,
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    KVM_PPC_ALLOCATE_HTAB,
    KVM_PPC_CONFIGURE_V3_MMU,
    KVM_PPC_CPU_BEHAV_FLUSH_COUNT_CACHE,
    KVM_PPC_CPU_CHAR,
    KVM_PPC_CPU_CHAR_BR_HINT_HONOURED,
    KVM_PPC_CPU_CHAR_L1D_FLUSH_ORI30,
    KVM_PPC_GET_CPU_CHAR,
    KVM_PPC_GET_PVINFO,
    KVM_PPC_GET_RMMU_INFO,
    KVM_PPC_MMUV3_CFG,
    KVM_PPC_MMUV3_GTSE,
    KVM_PPC_MMUV3_RADIX,
    KVM_PPC_RMMU_INFO,
    KVM_PPC_RTAS_DEFINE_TOKEN,
    KVM_RTAS_TOKEN_ARGS,
    KVM_SET_USER_MEMORY_REGION,
    KVM_SET_USER_MEMORY_REGION2,
    KVM_USERSPACE_MEMORY_REGION,
    KVM_USERSPACE_MEMORY_REGION2,
    KVM_VM_PPC_HV,
    KVM_VM_PPC_PR,
    PATB_GR,
    RTAS_NAME_LEN,
    KvmIoctl,
)


def vm_of(k: Kernel, vm_type: int = 0) -> int:
    return int(k.ioctl(k.open(), k.KVM_CREATE_VM, vm_type))


def nonzero(layout: object, k: Kernel, data: bytes) -> dict[str, int]:
    return {f: v for f, v in layout.unpack(k.arch.byteorder, data).items() if v}  # type: ignore[attr-defined]


# -- KVM_PPC_GET_CPU_CHAR ----------------------------------------------------------------------


def cpu_char(k: Kernel, vm: int) -> dict[str, int]:
    out = k.ioctl(vm, KVM_PPC_GET_CPU_CHAR.request(k.arch), bytes(b"\xaa" * KVM_PPC_CPU_CHAR.size))
    return KVM_PPC_CPU_CHAR.unpack(k.arch.byteorder, bytes(out))


PSERIES_MASKS = {"character_mask": 0xFF40000000000000, "behaviour_mask": 0xE400000000000000}
OPAL_MASKS = {"character_mask": 0xF940000000000000, "behaviour_mask": 0xE400000000000000}


@pytest.mark.parametrize("host", VM_HOSTS)
def test_cpu_char_is_the_firmwares_word_with_its_interfaces_mask(host: str) -> None:
    """pseries: H_GET_CPU_CHARACTERISTICS's words as they come (QEMU's by default, as the lab's
    L0s answer), the mask of the nine characteristics the hcall can say; powernv: nothing,
    masks included, where the device tree has no fw-features (QEMU's powernv, by default); the
    capability is 1 wherever the ioctl answers."""
    k = Kernel.from_profile(host)
    vm = vm_of(k)
    assert k.ioctl(vm, k.KVM_CHECK_EXTENSION, KVM_CAP_PPC_GET_CPU_CHAR) == 1
    fw = k.host.cpu_char
    expected = dict.fromkeys(("character", "behaviour", "character_mask", "behaviour_mask"), 0)
    if fw.available:
        expected |= {"character": fw.character, "behaviour": fw.behaviour}
        expected |= PSERIES_MASKS if k.host.platform == "pseries" else OPAL_MASKS
    assert cpu_char(k, vm) == expected


@pytest.mark.parametrize(
    ("host", "overrides", "expected"),
    [
        ("qemu-nested-hv-p10", {}, {"character": 0x3C40000000000000, "behaviour": 0xE400000000000000, **PSERIES_MASKS}),
        ("qemu-nested-hv-p10", {"cpu_char": {"available": False}}, {}),  # the hcall failed: zeroes, still 0
        ("qemu-powernv9", {}, {}),
        (
            "qemu-powernv9",
            {"cpu_char": {"available": True, "character": KVM_PPC_CPU_CHAR_L1D_FLUSH_ORI30}},
            {"character": KVM_PPC_CPU_CHAR_L1D_FLUSH_ORI30, **OPAL_MASKS},
        ),
        (
            "powervm-p10",
            {"cpu_char": {"character": (1 << 64) - 1, "behaviour": KVM_PPC_CPU_BEHAV_FLUSH_COUNT_CACHE}},
            {"character": (1 << 64) - 1, "behaviour": KVM_PPC_CPU_BEHAV_FLUSH_COUNT_CACHE, **PSERIES_MASKS},
        ),
    ],
)
def test_cpu_char_by_firmware(host: str, overrides: dict[str, object], expected: dict[str, int]) -> None:
    k = _overridden(host, overrides) if overrides else Kernel.from_profile(host)
    assert {f: v for f, v in cpu_char(k, vm_of(k)).items() if v} == expected


def test_cpu_char_on_powernv_holds_only_what_a_fw_feature_can_say() -> None:
    fw = {"available": True, "character": KVM_PPC_CPU_CHAR_BR_HINT_HONOURED}
    doc = profile.document(profile.find("qemu-powernv9"), "qemu-powernv9") | {"cpu_char": fw}
    with pytest.raises(ProfileError, match=r"cpu_char\.character: bits 0x400000000000000 are none that a fw-feat"):
        profile.from_mapping(doc, name="p", where="p.toml")


@pytest.mark.parametrize("host", VM_HOSTS)
def test_cpu_char_faults_on_a_bad_pointer_and_is_no_dev_ioctl(host: str) -> None:
    k = Kernel.from_profile(host)
    request = KVM_PPC_GET_CPU_CHAR.request(k.arch)
    assert errno_of(k.sys_ioctl, vm_of(k), request, 0) == errno.EFAULT
    assert errno_of(k.ioctl, k.open(), request, bytes(32)) == errno.EINVAL  # kvm_arch_dev_ioctl's default


# -- KVM_PPC_GET_RMMU_INFO ---------------------------------------------------------------------


def rmmu(k: Kernel, vm: int) -> dict[str, int]:
    out = k.ioctl(vm, KVM_PPC_GET_RMMU_INFO.request(k.arch), bytes(b"\xaa" * KVM_PPC_RMMU_INFO.size))
    return nonzero(KVM_PPC_RMMU_INFO, k, bytes(out))


GEOMETRIES = {"geo0_page_shift": 12, "geo0_level_bits0": 9, "geo0_level_bits1": 9, "geo0_level_bits2": 9,
              "geo0_level_bits3": 13, "geo1_page_shift": 16, "geo1_level_bits0": 5, "geo1_level_bits1": 9,
              "geo1_level_bits2": 9, "geo1_level_bits3": 13}  # fmt: skip
FOUR_SIZES = {"ap_encoding0": 0xC, "ap_encoding1": 0xA0000010, "ap_encoding2": 0x20000015, "ap_encoding3": 0x4000001E}


@pytest.mark.parametrize("host", VM_HOSTS)
def test_rmmu_info_on_a_radix_hosts_hv_vm(host: str) -> None:
    """kvmhv_get_rmmu_info: two geometries, then the AP encodings of the page sizes the cpu
    nodes' ibm,processor-radix-AP-encodings gave (PowerVM's and QEMU's pseries: 4K, 64K, 2M,
    1G); without the property (QEMU's powernv) the kernel assumes 4K and 64K.  A hash host, or a
    PR VM (no get_rmmu_info): EINVAL.  KVM_CAP_PPC_MMU_RADIX says which."""
    k = Kernel.from_profile(host)
    vm = vm_of(k)
    hv = k.ioctl(vm, k.KVM_CHECK_EXTENSION, KVM_CAP_PPC_MMU_RADIX) == 1
    request = KVM_PPC_GET_RMMU_INFO.request(k.arch)
    if k.host.mmu != "radix" or not hv:
        assert errno_of(k.ioctl, vm, request, bytes(96)) == errno.EINVAL
        return
    sizes = FOUR_SIZES if k.host.radix_ap_encodings else {"ap_encoding0": 0xC, "ap_encoding1": 0xA0000010}
    assert rmmu(k, vm) == GEOMETRIES | sizes
    assert errno_of(k.sys_ioctl, vm, request, 0) == errno.EFAULT


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        ([0x4000001E, 0x0000000C], {"ap_encoding0": 0xC, "ap_encoding1": 0x4000001E}),  # the kernel's order
        ([0x0000000C, 0x20000018, 0xE000000C], {"ap_encoding0": 0xE000000C}),  # 16M unknown; the last 4K wins
    ],
)
def test_rmmu_info_reads_the_encodings_as_radix_dt_scan_page_sizes_does(cells: list[int], expected: dict) -> None:
    k = _overridden("qemu-nested-hv-p10", {"device_tree": {"ibm,processor-radix-AP-encodings": cells}})
    assert rmmu(k, vm_of(k)) == GEOMETRIES | expected
    dt = hostfs.files(k)
    node = next(p for p in dt if p.endswith("/ibm,processor-radix-AP-encodings"))
    assert dt[node] == b"".join(c.to_bytes(4, "big") for c in cells)


def test_radix_ap_encodings_belong_to_a_radix_host() -> None:
    dt = {"ibm,processor-radix-AP-encodings": [12]}
    doc = profile.document(profile.find("qemu-nested-hv-p10-hash"), "h") | {"device_tree": dt}
    with pytest.raises(ProfileError, match="only a radix host's cpu nodes have it"):
        profile.from_mapping(doc, name="h", where="h.toml")


# -- KVM_PPC_RTAS_DEFINE_TOKEN -------------------------------------------------------------------


def define(k: Kernel, vm: int, name: bytes, token: int) -> int:
    args = (
        name.ljust(RTAS_NAME_LEN, b"\0") + KVM_RTAS_TOKEN_ARGS.pack(k.arch.byteorder, {"token": token})[RTAS_NAME_LEN:]
    )
    return int(k.ioctl(vm, KVM_PPC_RTAS_DEFINE_TOKEN.request(k.arch), bytearray(args)))


@pytest.mark.parametrize("host", VM_HOSTS)
def test_rtas_tokens_define_and_undefine_as_book3s_rtas_does(host: str) -> None:
    """A token must be new (EEXIST, asked before the name); the name one of XICS's four
    handlers, compared up to its NUL (ENOENT); a name may have several tokens; token 0 forgets
    the name's first definition, an unknown name silently."""
    k = Kernel.from_profile(host)
    vm = vm_of(k)
    assert k.ioctl(vm, k.KVM_CHECK_EXTENSION, KVM_CAP_PPC_RTAS) == 1
    assert define(k, vm, b"ibm,set-xive", 0x2000) == 0
    assert errno_of(define, k, vm, b"ibm,int-on", 0x2000) == errno.EEXIST
    assert errno_of(define, k, vm, b"ibm,nonesuch", 0x2000) == errno.EEXIST
    assert errno_of(define, k, vm, b"ibm,nonesuch", 0x3000) == errno.ENOENT
    assert errno_of(define, k, vm, b"ibm,set", 0x3000) == errno.ENOENT  # a prefix is not the name
    assert errno_of(define, k, vm, b"i" * RTAS_NAME_LEN, 0x3000) == errno.ENOENT  # no NUL at all
    assert define(k, vm, b"ibm,set-xive\0junk", 0x2200) == 0
    assert define(k, vm, b"ibm,get-xive", 0x2100) == 0
    assert define(k, vm, b"ibm,get-xive", 0) == 0
    assert define(k, vm, b"ibm,get-xive", 0x2100) == 0  # its token is free again
    assert define(k, vm, b"ibm,nonesuch", 0) == 0
    assert define(k, vm, b"ibm,set-xive", 0) == 0  # the first of its two definitions goes
    assert define(k, vm, b"ibm,int-off", 0x2000) == 0
    assert errno_of(define, k, vm, b"ibm,int-off", 0x2200) == errno.EEXIST
    assert errno_of(k.sys_ioctl, vm, KVM_PPC_RTAS_DEFINE_TOKEN.request(k.arch), 0) == errno.EFAULT
    other = vm_of(k)  # the tokens are the VM's
    assert define(k, other, b"ibm,int-off", 0x2000) == 0


# -- KVM_SET_USER_MEMORY_REGION(2) ---------------------------------------------------------------

MIB = 1 << 20


def region(k: Kernel, vm: int, *, v1: bool = True, **values: int) -> int:
    io, layout = (
        (KVM_SET_USER_MEMORY_REGION, KVM_USERSPACE_MEMORY_REGION) if v1
        else (KVM_SET_USER_MEMORY_REGION2, KVM_USERSPACE_MEMORY_REGION2)
    )  # fmt: skip
    return int(k.ioctl(vm, io.request(k.arch), bytearray(layout.pack(k.arch.byteorder, values))))


def region_errno(k: Kernel, vm: int, **values: int) -> int:
    return errno_of(region, k, vm, **values)


@pytest.mark.parametrize("host", VM_HOSTS)
def test_memory_slots_are_created_moved_flagged_and_deleted(host: str) -> None:
    """kvm_set_memory_region: a new slot; the same again changes nothing; an overlap is EEXIST;
    a slot moves (not onto another) and takes dirty logging, but keeps its size and user address;
    deleting needs the slot; REGION2 sets the same slots."""
    k = Kernel.from_profile(host)
    vm = vm_of(k)
    first = {"slot": 0, "memory_size": 256 * MIB, "userspace_addr": 0x10000000}
    assert region(k, vm, **first) == 0 and region(k, vm, **first) == 0
    second = {"slot": 1, "guest_phys_addr": 256 * MIB, "memory_size": 256 * MIB, "userspace_addr": 0x40000000}
    assert region_errno(k, vm, **(second | {"guest_phys_addr": 128 * MIB})) == errno.EEXIST
    assert region(k, vm, **second) == 0
    assert region(k, vm, **(second | {"guest_phys_addr": 1024 * MIB})) == 0  # moved
    assert region_errno(k, vm, **(second | {"guest_phys_addr": 0})) == errno.EEXIST
    assert region_errno(k, vm, **(second | {"guest_phys_addr": 1024 * MIB, "memory_size": 512 * MIB})) == errno.EINVAL
    assert region_errno(k, vm, **(second | {"guest_phys_addr": 1024 * MIB, "userspace_addr": 0x80000000})) == (
        errno.EINVAL
    )
    assert region(k, vm, **(second | {"guest_phys_addr": 1024 * MIB, "flags": KVM_MEM_LOG_DIRTY_PAGES})) == 0
    assert region(k, vm, slot=1) == 0
    assert region_errno(k, vm, slot=1) == errno.EINVAL  # nothing to delete
    assert region(k, vm, v1=False, **second) == 0  # the freed range, by REGION2
    assert k.ioctl(vm, k.KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY2) == 1


@pytest.mark.parametrize("host", VM_HOSTS)
@pytest.mark.parametrize(
    ("what", "values"),
    [
        ("read-only (powerpc has no HAVE_KVM_READONLY_MEM)", {"flags": KVM_MEM_READONLY}),
        ("guest_memfd (no CONFIG_KVM_GUEST_MEMFD)", {"flags": KVM_MEM_GUEST_MEMFD}),
        ("an unknown flag", {"flags": 8}),
        ("slot 32767 (KVM_USER_MEM_SLOTS)", {"slot": 32767}),
        ("address space 1 (powerpc has one)", {"slot": 0x10002}),
        ("a size of half a 4K page", {"memory_size": MIB + 2048}),
        ("a guest address of half a 4K page", {"guest_phys_addr": 4096 * MIB + 2048}),
        ("a user address of half a 4K page", {"userspace_addr": 0x50000800}),
        ("a kernel user address", {"userspace_addr": 1 << 63}),
        ("a wrapping guest range", {"guest_phys_addr": (1 << 64) - MIB, "memory_size": 2 * MIB}),
        ("more than KVM_MEM_MAX_NR_PAGES of 64K", {"memory_size": 1 << 47}),
    ],
)
def test_a_memory_slot_the_kernel_refuses_is_einval(host: str, what: str, values: dict[str, int]) -> None:
    k = Kernel.from_profile(host)
    base = {"slot": 2, "guest_phys_addr": 4096 * MIB, "memory_size": MIB, "userspace_addr": 0x50000000}
    assert region_errno(k, vm_of(k), **(base | values)) == errno.EINVAL, what


@pytest.mark.parametrize("host", VM_HOSTS)
def test_the_top_of_user_space_is_the_page_sizes(host: str) -> None:
    """access_ok() checks the address and the size apart (the gap above user space faults
    anyway): a slot may run past TASK_SIZE_USER64, which is 64TB with 4K pages and 4PB with 64K;
    a 4K-page size is a whole page of a 4K kernel only."""
    k = Kernel.from_profile(host)
    vm = vm_of(k)
    top, big = 1 << 46, k.host.page_size == 65536
    assert region(k, vm, slot=2, guest_phys_addr=4096 * MIB, memory_size=MIB, userspace_addr=top - 65536) == 0
    at_top = {"slot": 3, "guest_phys_addr": 8192 * MIB, "memory_size": MIB, "userspace_addr": top}
    assert (region(k, vm, **at_top) if big else region_errno(k, vm, **at_top)) == (0 if big else errno.EINVAL)
    pages_4k = {"slot": 6, "guest_phys_addr": 1 << 35, "memory_size": MIB + 4096, "userspace_addr": 0x50000000}
    assert (region_errno(k, vm, **pages_4k) if big else region(k, vm, **pages_4k)) == (errno.EINVAL if big else 0)


@pytest.mark.parametrize("host", VM_HOSTS)
def test_an_hv_slot_larger_than_the_ram_can_map_is_enomem(host: str) -> None:
    """kvmppc_core_prepare_memory_region_hv: the reverse map (8 bytes a page) of a slot may not
    need more pages than totalram_pages (MemTotal); PR maps nothing ahead and takes the slot."""
    k = _overridden(host, {"mem_total_kb": 2 << 20})
    vm = vm_of(k)
    hv = bool(k.ioctl(vm, k.KVM_CHECK_EXTENSION, KVM_CAP_PPC_SMT))
    max_pages = ((1 << 31) - 1) * k.host.page_size
    slot = {"slot": 4, "guest_phys_addr": 1 << 44, "memory_size": max_pages, "userspace_addr": 1 << 32}
    if hv:
        assert region_errno(k, vm, **slot) == errno.ENOMEM
        assert region(k, vm, **(slot | {"memory_size": 1 << 30})) == 0  # a 2M reverse map
    else:
        assert region(k, vm, **slot) == 0
    assert region_errno(k, vm, **(slot | {"slot": 5, "memory_size": max_pages + k.host.page_size})) == errno.EINVAL


@pytest.mark.parametrize("host", VM_HOSTS)
def test_memory_region_faults_and_v1_flags(host: str) -> None:
    """copy_from_user of the whole struct (32 or 160 bytes), then REGION's own flags check."""
    k = Kernel.from_profile(host)
    vm = vm_of(k)
    for io in (KVM_SET_USER_MEMORY_REGION, KVM_SET_USER_MEMORY_REGION2):
        assert errno_of(k.sys_ioctl, vm, io.request(k.arch), 0) == errno.EFAULT
    assert region_errno(k, vm, slot=0, flags=KVM_MEM_GUEST_MEMFD, memory_size=MIB, userspace_addr=1 << 28) == (
        errno.EINVAL
    )


def dirty_log(k: Kernel, vm: int, slot: int, bitmap: int) -> int:
    arg = KVM_DIRTY_LOG.pack(k.arch.byteorder, {"slot": slot, "dirty_bitmap": bitmap})
    return int(k.ioctl(vm, KVM_GET_DIRTY_LOG.request(k.arch), bytearray(arg)))


@pytest.mark.parametrize(("host", "vm_type"), [(h, t) for h in VM_HOSTS for t in vm_types(h)])
def test_dirty_log_of_a_logged_slot_is_its_bitmap(host: str, vm_type: int) -> None:
    """The ops' get_dirty_log: the slot's bitmap, whole longs of it (ALIGN(npages, 64) / 8), zeros
    (no guest ran), copied to the struct's pointer: EFAULT where it cannot be; ENOENT for a slot
    without a log or none; EINVAL past KVM_USER_MEM_SLOTS or in address space 1 (HV compares the
    whole u32, PR's kvm_get_dirty_log its halves: both refuse these)."""
    k = Kernel.from_profile(host)
    vm = vm_of(k, vm_type)
    size = 65 * k.host.page_size
    region(k, vm, slot=3, flags=KVM_MEM_LOG_DIRTY_PAGES, guest_phys_addr=0, memory_size=size, userspace_addr=1 << 28)
    region(k, vm, slot=4, guest_phys_addr=1 << 32, memory_size=MIB, userspace_addr=1 << 30)
    bitmap = k.memory.map(4096, data=b"\xaa" * 4096)
    assert dirty_log(k, vm, 3, bitmap) == 0
    assert k.memory.read(bitmap, 24) == bytes(16) + b"\xaa" * 8  # 65 pages: two longs
    assert errno_of(dirty_log, k, vm, 3, 0) == errno.EFAULT
    assert errno_of(dirty_log, k, vm, 4, bitmap) == errno.ENOENT  # no KVM_MEM_LOG_DIRTY_PAGES
    assert errno_of(dirty_log, k, vm, 5, bitmap) == errno.ENOENT  # no slot
    for slot in (32767, 0x10003):
        assert errno_of(dirty_log, k, vm, slot, bitmap) == errno.EINVAL
    assert errno_of(k.ioctl, vm, KVM_GET_DIRTY_LOG.request(k.arch), 0) == errno.EFAULT


# -- KVM_PPC_ALLOCATE_HTAB and KVM_PPC_CONFIGURE_V3_MMU: the VM's MMU ---------------------------

LPCR_VPM1, LPCR_HAIL, LPCR_UPRT, LPCR_HR, LPCR_GTSE = 1 << 62, 0x04000000, 0x00400000, 0x00100000, 0x400
MMU_BITS = LPCR_VPM1 | LPCR_HAIL | LPCR_UPRT | LPCR_HR | LPCR_GTSE
HPT_LPCR = LPCR_VPM1  # kvmppc_switch_mmu_to_hpt
RADIX_LPCR = LPCR_UPRT | LPCR_GTSE | LPCR_HR  # kvmppc_switch_mmu_to_radix (and HAIL on POWER10 bare metal)


def allocate_htab(g: Guest, order: int | None) -> int:
    """KVM_PPC_ALLOCATE_HTAB with the order in user memory (None: a NULL pointer)."""
    addr = 0 if order is None else g.k.memory.map(4, data=order.to_bytes(4, g.k.arch.byteorder))
    return int(g.k.sys_ioctl(g.vm, KVM_PPC_ALLOCATE_HTAB.request(g.k.arch), addr))


def configure_mmu(g: Guest, flags: int, process_table: int) -> int:
    cfg = KVM_PPC_MMUV3_CFG.pack(g.k.arch.byteorder, {"flags": flags, "process_table": process_table})
    return int(g.k.ioctl(g.vm, KVM_PPC_CONFIGURE_V3_MMU.request(g.k.arch), bytearray(cfg)))


def mmu_lpcr(g: Guest, vcpu: int | None = None) -> int:
    """The MMU's bits of a vcpu's LPCR (KVM_GET_ONE_REG(LPCR_64))."""
    g = attrs.evolve(g, vcpu=g.vcpu if vcpu is None else vcpu)
    return int.from_bytes(one_reg(g, "LPCR_64")[:8], g.k.arch.byteorder) & MMU_BITS


def radix_lpcr(g: Guest) -> int:
    bare_isa31 = g.k.host.platform == "powernv" and (g.k.host.cpu.effective.level >= 10)  # type: ignore[union-attr]
    return RADIX_LPCR | (LPCR_HAIL if bare_isa31 else 0)


def bare_metal_hv(g: Guest) -> bool:
    return g.hv and g.k.host.platform == "powernv"


@pytest.mark.parametrize("host", VM_HOSTS)
def test_allocate_htab_by_backend_and_platform(host: str) -> None:
    """kvm_arch_vm_ioctl's default: PR's arch_vm_ioctl answers ENOTTY (QEMU then allocates the
    HPT itself); HV on an L1 EOPNOTSUPP before it reads the order; on bare metal get_user (EFAULT),
    an order of 18..46 (EINVAL), and 0 with the order left as it was (7.3 writes nothing back)."""
    g = guest(host)
    if not g.hv:
        assert errno_of(allocate_htab, g, 24) == errno.ENOTTY
        return
    if g.k.host.platform == "pseries":
        assert errno_of(allocate_htab, g, None) == errno.EOPNOTSUPP
        assert errno_of(allocate_htab, g, 24) == errno.EOPNOTSUPP
        assert mmu_lpcr(g) == radix_lpcr(g)  # the VM is as it was
        return
    assert errno_of(allocate_htab, g, None) == errno.EFAULT
    for order, expected in ((17, errno.EINVAL), (47, errno.EINVAL), (0xFFFFFFFF, errno.EINVAL)):
        assert errno_of(allocate_htab, g, order) == expected
    addr = g.k.memory.map(4, data=(24).to_bytes(4, g.k.arch.byteorder))
    assert g.k.sys_ioctl(g.vm, KVM_PPC_ALLOCATE_HTAB.request(g.k.arch), addr) == 0
    assert g.k.memory.read(addr, 4) == (24).to_bytes(4, g.k.arch.byteorder)
    assert allocate_htab(g, 24) == 0  # the same order: the HPT cleared
    assert allocate_htab(g, 18) == 0
    assert mmu_lpcr(g) == HPT_LPCR


@pytest.mark.parametrize("host", ["qemu-powernv9", "qemu-powernv10"])
def test_allocate_htab_makes_a_radix_vm_hpt_before_it_checks_the_order(host: str) -> None:
    """kvmppc_alloc_reset_hpt switches a radix VM to HPT first: an order it then refuses leaves
    the VM HPT (VPM1; UPRT, GTSE, HR and HAIL cleared), in every vcpu's LPCR and in a new one's."""
    g = guest(host)
    assert mmu_lpcr(g) == radix_lpcr(g)
    assert errno_of(allocate_htab, g, 17) == errno.EINVAL
    assert mmu_lpcr(g) == HPT_LPCR
    second = int(g.k.ioctl(g.vm, g.k.KVM_CREATE_VCPU, 1))
    assert mmu_lpcr(g, second) == HPT_LPCR


@pytest.mark.parametrize("host", ["qemu-powernv9", "qemu-powernv9-hash-hv-pr-64k"])
def test_allocate_htab_of_order_0_with_no_hpt_is_named_not_modelled(host: str) -> None:
    """Linux 7.3 compares the order with the HPT's before it checks it: 0 with no HPT memsets a
    NULL one (an oops the simulator does not imitate: a named ENOTTY)."""
    g = guest(host)
    with pytest.raises(OSError, match=r"not modelled.*NULL HPT") as exc:
        allocate_htab(g, 0)
    assert exc.value.errno == errno.ENOTTY
    assert allocate_htab(g, 18) == 0
    assert errno_of(allocate_htab, g, 0) == errno.EINVAL  # the HPT freed, then 0 refused: none left
    assert errno_of(allocate_htab, g, 0) == errno.ENOTTY


@pytest.mark.parametrize(
    ("mem_total_kb", "order", "expected"),
    [
        (2 << 20, 24, 0),  # the buddy allocator's largest block: 16MB
        (2 << 20, 26, 0),  # 64MB from kvm_cma (5% of 2GB: 102MB)
        (2 << 20, 27, errno.ENOMEM),  # 128MB: more than kvm_cma, past the buddy's largest block
        (4 << 20, 27, 0),  # 5% of 4GB: 204MB
        (64 << 30, 46, errno.ENOMEM),  # 64TB
        (1 << 10, 24, errno.ENOMEM),  # more than the RAM
    ],
)
def test_an_hpt_comes_from_kvm_cma_or_the_buddy_allocator(mem_total_kb: int, order: int, expected: int) -> None:
    k = _overridden("qemu-powernv9-hash-hv-pr-64k", {"mem_total_kb": mem_total_kb})
    vm = vm_of(k)
    addr = k.memory.map(4, data=order.to_bytes(4, k.arch.byteorder))
    call = k.sys_ioctl, vm, KVM_PPC_ALLOCATE_HTAB.request(k.arch), addr
    assert (errno_of(*call) if expected else call[0](*call[1:])) == expected


PT = 5  # a process table's size field (2^(5+12) bytes)


@pytest.mark.parametrize("host", VM_HOSTS)
@pytest.mark.parametrize(
    ("flags", "process_table", "refused_by"),
    [
        (4, PATB_GR | PT, "all"),  # an unknown flag
        (KVM_PPC_MMUV3_RADIX, PT, "all"),  # GR must match RADIX
        (0, PATB_GR | PT, "all"),
        (KVM_PPC_MMUV3_RADIX, PATB_GR | 25, "all"),  # PRTS > 24
        (KVM_PPC_MMUV3_RADIX | KVM_PPC_MMUV3_GTSE, PATB_GR | 24, "hash host"),
        (KVM_PPC_MMUV3_GTSE, 0x1000 | PT, "L1"),  # an HPT guest
    ],
)
def test_configure_v3_mmu_checks_in_kvmhv_configure_mmus_order(
    host: str, flags: int, process_table: int, refused_by: str
) -> None:
    """kvmhv_configure_mmu: flags, GR against RADIX, the size field, a radix guest on a hash host,
    an HPT guest on an L1 -- all EINVAL; PR's configure_mmu takes only flags 0 and table 0."""
    g = guest(host)
    refused = (
        not g.hv
        or refused_by == "all"
        or (refused_by == "hash host" and g.k.host.mmu == "hash")
        or (refused_by == "L1" and g.k.host.platform == "pseries")
    )
    if refused:
        assert errno_of(configure_mmu, g, flags, process_table) == errno.EINVAL
    else:
        assert configure_mmu(g, flags, process_table) == 0


@pytest.mark.parametrize("host", VM_HOSTS)
def test_configure_v3_mmu_switches_the_vm_and_sets_gtse(host: str) -> None:
    """The VM's MMU and LPCR_GTSE follow the call: a radix host's VM goes to HPT and back on bare
    metal, keeps radix on an L1; GTSE on or off.  PR: flags 0 and table 0 are fine, nothing else;
    a NULL struct EFAULT."""
    g = guest(host)
    assert errno_of(g.k.sys_ioctl, g.vm, KVM_PPC_CONFIGURE_V3_MMU.request(g.k.arch), 0) == errno.EFAULT
    if not g.hv:
        assert configure_mmu(g, 0, 0) == 0
        assert errno_of(configure_mmu, g, 0, 0x1000) == errno.EINVAL
        return
    hpt_ok = g.k.host.platform == "powernv"
    if g.k.host.mmu == "radix":
        assert configure_mmu(g, KVM_PPC_MMUV3_RADIX, PATB_GR | PT) == 0
        assert mmu_lpcr(g) == radix_lpcr(g) & ~LPCR_GTSE
        assert configure_mmu(g, KVM_PPC_MMUV3_RADIX | KVM_PPC_MMUV3_GTSE, PATB_GR | PT) == 0
        assert mmu_lpcr(g) == radix_lpcr(g)
    if hpt_ok:
        assert configure_mmu(g, KVM_PPC_MMUV3_GTSE, PT) == 0
        assert mmu_lpcr(g) == HPT_LPCR | LPCR_GTSE
        assert configure_mmu(g, 0, 0) == 0
        assert mmu_lpcr(g) == HPT_LPCR
    if hpt_ok and g.k.host.mmu == "radix":  # back to radix: GTSE as the flags say
        assert configure_mmu(g, KVM_PPC_MMUV3_RADIX, PATB_GR) == 0
        assert mmu_lpcr(g) == radix_lpcr(g) & ~LPCR_GTSE


@pytest.mark.parametrize("vm_type", [KVM_VM_PPC_HV, KVM_VM_PPC_PR])
def test_configure_v3_mmu_wants_isa_3_0(vm_type: int) -> None:
    """Both backends refuse before ISA 3.0 (a POWER8 in HV mode), whatever the struct: ENODEV."""
    k = _overridden("qemu-powernv9-hash-hv-pr-64k", {"cpu": {"pvr": 0x004D0200, "model": "POWER8"}})
    g = Guest(k, vm_of(k, vm_type), -1, hv=vm_type == KVM_VM_PPC_HV)
    assert errno_of(configure_mmu, g, 0, 0) == errno.ENODEV
    assert errno_of(configure_mmu, g, 4, 7) == errno.ENODEV


# -- KVM_PPC_GET_PVINFO -------------------------------------------------------------------------


@pytest.mark.parametrize("host", VM_HOSTS)
def test_pvinfo_is_the_paravirtual_hcall_on_any_vm(host: str) -> None:
    """kvm_vm_ioctl_get_pvinfo: lis r0,"KV"; ori r0,"M!"; sc; nop -- big-endian instructions
    whatever the kernel's order -- and EV_IDLE, on every VM (the capability says so on PR's only)."""
    k = Kernel.from_profile(host)
    vm = vm_of(k)
    out = bytes(k.ioctl(vm, KVM_PPC_GET_PVINFO.request(k.arch), bytes(b"\xaa" * 128)))
    assert out[:4] == (1).to_bytes(4, k.arch.byteorder)
    assert out[4:20] == bytes.fromhex("3c004b5660004d214400000260000000")
    assert out[20:] == bytes(108)
    pr = k.ioctl(vm, k.KVM_CHECK_EXTENSION, KVM_CAP_PPC_SMT) == 0
    assert k.ioctl(vm, k.KVM_CHECK_EXTENSION, KVM_CAP_PPC_GET_PVINFO) == int(pr)
    assert errno_of(k.sys_ioctl, vm, KVM_PPC_GET_PVINFO.request(k.arch), 0) == errno.EFAULT


# -- KVM_IRQ_LINE(_STATUS) ----------------------------------------------------------------------


@pytest.mark.parametrize("host", [*VM_HOSTS, "x86_64"])
@pytest.mark.parametrize("io", [KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS])
def test_an_irq_line_needs_an_in_kernel_interrupt_controller(host: str, io: KvmIoctl) -> None:
    """kvm_vm_ioctl copies the struct in, then the arch's kvm_vm_ioctl_irq_line() is ENXIO without
    an in-kernel interrupt controller (powerpc's XICS or XIVE device, x86's irqchip: none is made
    here), before _STATUS would copy it back; this machine's real /dev/kvm answers so too."""
    k = Kernel.from_profile(host)
    vm = vm_of(k)
    assert errno_of(k.ioctl, vm, io.request(k.arch), bytes(8)) == errno.ENXIO
    assert errno_of(k.sys_ioctl, vm, io.request(k.arch), 0) == errno.EFAULT
