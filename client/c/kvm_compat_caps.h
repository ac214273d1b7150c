/*
 * KVM_PPC_GET_COMPAT_CAPS, both ABI revisions, transcribed from kvmsim's reference
 * (Linux 7.3 merged v5; the seed patch is v4).  Kernel headers older than Linux 7.3 do not
 * have these, so a program carries them itself.  Built for powerpc, the generic KVM numbers
 * come from <linux/kvm.h> and the two requests from <linux/ioctl.h>'s _IOR/_IO; built
 * elsewhere (to talk to a simulated POWER kernel), kvmsim_ioc() computes them for the
 * architecture of the kernel at run time (powerpc: 13 size bits, 3 direction bits at 29,
 * _IOC_NONE 1, _IOC_READ 2, _IOC_WRITE 4; generic: 14 size bits, 2 direction bits at 30).
 */
#ifndef KVM_COMPAT_CAPS_H
#define KVM_COMPAT_CAPS_H

#include <stdint.h>

#define KVMSIM_KVMIO 0xAE

/* v4 (the seed document) */
struct kvm_ppc_compat_caps_v4 {
	uint64_t flags;               /* Reserved for future use */
	uint64_t size;                /* Size of this structure */
	uint64_t compat_capabilities; /* Capabilities supported by the host */
};
#define KVM_CAP_PPC_COMPAT_CAPS_V4 249
/* KVM_PPC_GET_COMPAT_CAPS_V4 = _IOR(KVMIO, 0xe4, struct kvm_ppc_compat_caps_v4): 0x4018aee4 on powerpc */

/* v5 (merged for Linux 7.3) */
struct kvm_ppc_compat_caps_v5 {
	uint64_t size;
	uint64_t flags;
	uint64_t compat_capabilities;
};
#define KVM_CAP_PPC_COMPAT_CAPS_V5 250
#define KVM_PPC_COMPAT_CAPS_SIZE_VER0 24
/* KVM_PPC_GET_COMPAT_CAPS_V5 = _IO(KVMIO, 0xe4): 0x2000aee4 on powerpc */

#define KVM_PPC_GET_COMPAT_CAPS_NR 0xe4

#ifdef __powerpc__
/* built for powerpc: the real <linux/ioctl.h> macros encode them */
#include <linux/ioctl.h>
#define KVM_PPC_GET_COMPAT_CAPS_V4 _IOR(KVMSIM_KVMIO, KVM_PPC_GET_COMPAT_CAPS_NR, struct kvm_ppc_compat_caps_v4)
#define KVM_PPC_GET_COMPAT_CAPS_V5 _IO(KVMSIM_KVMIO, KVM_PPC_GET_COMPAT_CAPS_NR)
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
