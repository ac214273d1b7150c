/*
 * What QEMU does with KVM_PPC_GET_COMPAT_CAPS: open /dev/kvm, check the API version, create
 * a VM, check the capability on /dev/kvm as QEMU's kvm_check_extension() does (250: Linux 7.3,
 * else 249: the v4 draft; --cap-fd vm asks the VM fd), issue the
 * ioctl (retry once on E2BIG with the size the kernel wrote back, when it is at least 24),
 * mask unknown bits and print the modes and QEMU's compat PVR as one JSON object.  The v5
 * draft is spoken only when asked.  Exit 0 modes reported, 1 kernel error, 2 bad usage, 3
 * host cannot answer.
 *
 *   kvm_compat_caps [--abi linux-7.3|v5|v4] [--struct-size N] [--null | --wild] [--repeat N] [--cap-fd dev|vm]
 *
 * --null / --wild pass a NULL / unmapped pointer to the ioctl, to see EFAULT.
 * --repeat N issues the final ioctl N more times and adds "ns_per_ioctl" (for make bench).
 * --numbers prints the request numbers it would use, and exits.
 * The kernel's architecture (ioctl encoding, byte order) is uname()'s machine.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#ifdef __powerpc__
#include <linux/kvm.h>
#endif

#include "kvm_compat_caps.h"

static int powerpc, big_endian;

static const char *errname(int e)
{
	switch (e) {
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EINTR: return "EINTR";
	case EIO: return "EIO";
	case EBADF: return "EBADF";
	case EACCES: return "EACCES";
	case EFAULT: return "EFAULT";
	case EINVAL: return "EINVAL";
	case ENOTTY: return "ENOTTY";
	case E2BIG: return "E2BIG";
	case ENOSYS: return "ENOSYS";
	default: return "EUNKNOWN";
	}
}

#ifndef __powerpc__
static unsigned long kvm_io(unsigned nr)
{
	return kvmsim_ioc(powerpc, KVMSIM_IOC_NONE, KVMSIM_KVMIO, nr, 0);
}
#endif

/* the kernel's byte order, whatever this program's is */
static void put64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[big_endian ? 7 - i : i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v |= (uint64_t)p[big_endian ? 7 - i : i] << (8 * i);
	return v;
}

static int fail(int code, const char *kind, const char *call, int e)
{
	if (e)
		printf("{\"error\": {\"kind\": \"%s\", \"call\": \"%s\", \"errno\": %d, \"name\": \"%s\"}}\n", kind, call, e,
		       errname(e));
	else
		printf("{\"error\": {\"kind\": \"%s\", \"call\": \"%s\", \"errno\": null, \"name\": null}}\n", kind, call);
	return code;
}

int main(int argc, char **argv)
{
	const char *abi = NULL;
	unsigned size = 24;
	long repeat = 0;
	int numbers = 0, cap_on_vm = 0;
	enum { GOOD, NUL, WILD } pointer = GOOD;
	struct utsname u;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--abi") && i + 1 < argc &&
		    (!strcmp(argv[i + 1], "linux-7.3") || !strcmp(argv[i + 1], "v4") || !strcmp(argv[i + 1], "v5")))
			abi = argv[++i];
		else if (!strcmp(argv[i], "--struct-size") && i + 1 < argc && (size = (unsigned)atoi(argv[++i])) >= 24 && size <= 1024 && size % 8 == 0)
			;
		else if (!strcmp(argv[i], "--repeat") && i + 1 < argc && (repeat = atol(argv[++i])) > 0)
			;
		else if (!strcmp(argv[i], "--numbers"))
			numbers = 1;
		else if (!strcmp(argv[i], "--cap-fd") && i + 1 < argc && (!strcmp(argv[i + 1], "dev") || !strcmp(argv[i + 1], "vm")))
			cap_on_vm = !strcmp(argv[++i], "vm");
		else if (!strcmp(argv[i], "--null"))
			pointer = NUL;
		else if (!strcmp(argv[i], "--wild"))
			pointer = WILD;
		else {
			fprintf(stderr, "kvm_compat_caps: bad argument '%s' (usage: [--abi linux-7.3|v5|v4] [--struct-size N] [--null|--wild] [--repeat N] [--numbers] [--cap-fd dev|vm])\n", argv[i]);
			return 2;
		}
	}
	if (uname(&u) < 0)
		return fail(3, "no-device", "uname", errno);
	powerpc = !strncmp(u.machine, "ppc", 3);
	big_endian = powerpc && strcmp(u.machine, "ppc64le") != 0;

#ifdef __powerpc__
	/* built for powerpc: the real headers' numbers */
	unsigned long get_api_version = KVM_GET_API_VERSION, create_vm = KVM_CREATE_VM, check_extension = KVM_CHECK_EXTENSION;
	unsigned long request_v4 = KVM_PPC_GET_COMPAT_CAPS_DRAFT_V4, request_v5 = KVM_PPC_GET_COMPAT_CAPS_DRAFT_V5;
#ifdef KVM_PPC_GET_COMPAT_CAPS
	unsigned long request_73 = KVM_PPC_GET_COMPAT_CAPS; /* a Linux 7.3 <linux/kvm.h> */
#else
	unsigned long request_73 = _IO(KVMSIM_KVMIO, KVMSIM_PPC_GET_COMPAT_CAPS_NR);
#endif
#else
	unsigned long get_api_version = kvm_io(0x00), create_vm = kvm_io(0x01), check_extension = kvm_io(0x03);
	unsigned long request_v4 = kvmsim_ioc(powerpc, KVMSIM_IOC_READ, KVMSIM_KVMIO, KVM_PPC_GET_COMPAT_CAPS_DRAFT_NR,
	                                      sizeof(struct kvm_ppc_compat_caps_draft_v4));
	unsigned long request_v5 = kvm_io(KVM_PPC_GET_COMPAT_CAPS_DRAFT_NR);
	unsigned long request_73 = kvm_io(KVMSIM_PPC_GET_COMPAT_CAPS_NR);
#endif
	if (numbers) {
		printf("{\"KVM_GET_API_VERSION\": %lu, \"KVM_CREATE_VM\": %lu, \"KVM_CHECK_EXTENSION\": %lu, "
		       "\"linux-7.3\": %lu, \"v5\": %lu, \"v4\": %lu}\n",
		       get_api_version, create_vm, check_extension, request_73, request_v5, request_v4);
		return 0;
	}
	int dev = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return fail(3, "no-device", "open", errno);
	int version = ioctl(dev, get_api_version, 0);
	if (version != 12)
		return fail(3, "unsupported", "KVM_GET_API_VERSION", version < 0 ? errno : 0);
	int vm = ioctl(dev, create_vm, 0);
	if (vm < 0)
		return fail(1, "kernel", "KVM_CREATE_VM", errno);
	int cap_fd = cap_on_vm ? vm : dev;

	if (!abi) {
		if (ioctl(cap_fd, check_extension, KVMSIM_CAP_PPC_COMPAT_CAPS) > 0)
			abi = "linux-7.3";
		else if (ioctl(cap_fd, check_extension, KVM_CAP_PPC_COMPAT_CAPS_DRAFT_V4) > 0)
			abi = "v4";
		else
			return fail(3, "unsupported", "KVM_CHECK_EXTENSION", 0); /* QEMU: the raw host PVR */
	}
	int v4 = !strcmp(abi, "v4");
	unsigned long request = v4 ? request_v4 : !strcmp(abi, "v5") ? request_v5 : request_73;
	unsigned size_off = v4 ? 8 : 0, caps_off = 16;
	unsigned char buf[1024];
	int r = -1;
	for (int attempt = 0; attempt < 2; attempt++) {
		memset(buf, 0, sizeof(buf));
		put64(buf + size_off, size);
		void *arg = pointer == NUL ? NULL : pointer == WILD ? (void *)(uintptr_t)0xdead0000 : buf;
		r = ioctl(vm, request, arg);
		if (r == 0 || errno != E2BIG || attempt)
			break;
		uint64_t wanted = get64(buf + size_off);
		if (wanted < KVM_PPC_COMPAT_CAPS_SIZE_VER0 || wanted > size)
			break;
		size = (unsigned)wanted;
	}
	if (r < 0)
		return fail(1, "kernel", "KVM_PPC_GET_COMPAT_CAPS", errno);
	double ns_per_ioctl = 0;
	if (repeat) {
		struct timespec t0, t1;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		for (long i = 0; i < repeat; i++)
			ioctl(vm, request, buf);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		ns_per_ioctl = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / repeat;
	}
	uint64_t caps = get64(buf + caps_off); /* bits outside the mask are ignored, as QEMU does */

	/* QEMU's PVR for each mode: POWER9 DD2.2, POWER10 DD2.0, POWER11 DD2.0 */
	static const struct { uint64_t bit; const char *name; unsigned pvr; } modes[] = {
		{KVM_PPC_COMPAT_CAP_POWER9, "power9", 0x004e1202},
		{KVM_PPC_COMPAT_CAP_POWER10, "power10", 0x00801200},
		{KVM_PPC_COMPAT_CAP_POWER11, "power11", 0x00821200}};
	const char *recommended = NULL;
	unsigned pvr = 0;
	printf("{\"abi\": \"%s\", \"compat_capabilities\": %llu, \"unknown_bits\": %llu, \"modes\": [", abi,
	       (unsigned long long)caps, (unsigned long long)(caps & ~KVM_PPC_COMPAT_BITMASK));
	for (unsigned i = 0, n = 0; i < 3; i++)
		if (caps & modes[i].bit) {
			printf("%s\"%s\"", n++ ? ", " : "", modes[i].name);
			recommended = modes[i].name;
			pvr = modes[i].pvr;
		}
	if (recommended)
		printf("], \"recommended\": \"%s\", \"qemu_host_compat_pvr\": %u", recommended, pvr);
	else
		printf("], \"recommended\": null, \"qemu_host_compat_pvr\": null");
	if (repeat)
		printf(", \"ns_per_ioctl\": %.0f", ns_per_ioctl);
	printf("}\n");
	close(vm);
	close(dev);
	return 0;
}
