/*
 * KVM_PPC_GET_COMPAT_CAPS: the numbers of the kernel that shipped (Linux 7.3) by default, and
 * the two posted drafts behind explicit names.  Kernel headers older than 7.3 do not have
 * them, so a program carries them itself.  Built for powerpc, the generic KVM numbers come
 * from <linux/kvm.h> (and, where it is a 7.3 header, its KVM_PPC_GET_COMPAT_CAPS) and the
 * requests from <linux/ioctl.h>'s _IOR/_IO; built elsewhere (to talk to a simulated POWER
 * kernel), kvmsim_ioc() computes them for the kernel's architecture at run time (powerpc: 13
 * size bits, 3 direction bits at 29, _IOC_NONE 1, _IOC_READ 2, _IOC_WRITE 4; generic: 14 size
 * bits, 2 direction bits at 30).
 */
#ifndef KVM_COMPAT_CAPS_H
#define KVM_COMPAT_CAPS_H

#include <stdint.h>

#define KVMSIM_KVMIO 0xAE

/* Linux 7.3 (torvalds/linux ac3e65dd): the default */
struct kvmsim_ppc_compat_caps {
	uint64_t size;                /* Size of this structure */
	uint64_t flags;               /* Reserved for future use */
	uint64_t compat_capabilities; /* Capabilities supported by the host */
};
#define KVMSIM_CAP_PPC_COMPAT_CAPS 250
#define KVMSIM_PPC_GET_COMPAT_CAPS_NR 0xb8 /* _IO(KVMIO, 0xb8): 0x2000aeb8 on powerpc */
#define KVM_PPC_COMPAT_CAPS_SIZE_VER0 24

/* The posted drafts, only when asked for by name */
struct kvm_ppc_compat_caps_draft_v4 {
	uint64_t flags;
	uint64_t size;
	uint64_t compat_capabilities;
};
#define KVM_CAP_PPC_COMPAT_CAPS_DRAFT_V4 249 /* _IOR(KVMIO, 0xe4, 24 bytes): 0x4018aee4 on powerpc */
#define KVM_CAP_PPC_COMPAT_CAPS_DRAFT_V5 250 /* _IO(KVMIO, 0xe4): 0x2000aee4; the v5 layout is 7.3's */
#define KVM_PPC_GET_COMPAT_CAPS_DRAFT_NR 0xe4

#ifdef __powerpc__
/* built for powerpc: the real <linux/ioctl.h> macros encode them */
#include <linux/ioctl.h>
#define KVM_PPC_GET_COMPAT_CAPS_DRAFT_V4 _IOR(KVMSIM_KVMIO, KVM_PPC_GET_COMPAT_CAPS_DRAFT_NR, struct kvm_ppc_compat_caps_draft_v4)
#define KVM_PPC_GET_COMPAT_CAPS_DRAFT_V5 _IO(KVMSIM_KVMIO, KVM_PPC_GET_COMPAT_CAPS_DRAFT_NR)
#endif

/* IBM MSB-0 bit numbering: "bit 1" is 1 << 62 */
#define KVM_PPC_COMPAT_CAP_POWER9 (1ULL << 62)
#define KVM_PPC_COMPAT_CAP_POWER10 (1ULL << 61)
#define KVM_PPC_COMPAT_CAP_POWER11 (1ULL << 60)
#define KVM_PPC_COMPAT_BITMASK (KVM_PPC_COMPAT_CAP_POWER9 | KVM_PPC_COMPAT_CAP_POWER10 | KVM_PPC_COMPAT_CAP_POWER11)

enum kvmsim_ioc_dir { KVMSIM_IOC_NONE, KVMSIM_IOC_READ, KVMSIM_IOC_WRITE };

static inline unsigned long kvmsim_ioc(int powerpc, enum kvmsim_ioc_dir dir, unsigned type, unsigned nr, unsigned size)
{
	static const unsigned ppc[] = {1, 2, 4}, gen[] = {0, 2, 1};
	unsigned long d = powerpc ? ppc[dir] : gen[dir];
	return d << (powerpc ? 29 : 30) | (unsigned long)size << 16 | type << 8 | nr;
}

#endif
