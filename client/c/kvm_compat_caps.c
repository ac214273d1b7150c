/*
 * What QEMU does with KVM_PPC_GET_COMPAT_CAPS: open /dev/kvm, check the API version, create
 * a VM, check the capability on the VM fd (v5's 250, else v4's 249), issue the ioctl (v5:
 * retry once on E2BIG with the size the kernel wrote back) and print the modes as one JSON
 * object.  Exit 0 modes reported, 1 kernel error, 2 bad usage, 3 host cannot answer.
 *
 *   kvm_compat_caps [--abi v4|v5] [--struct-size N] [--null | --wild] [--repeat N]
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
	int numbers = 0;
	enum { GOOD, NUL, WILD } pointer = GOOD;
	struct utsname u;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--abi") && i + 1 < argc && (!strcmp(argv[i + 1], "v4") || !strcmp(argv[i + 1], "v5")))
			abi = argv[++i];
		else if (!strcmp(argv[i], "--struct-size") && i + 1 < argc && (size = (unsigned)atoi(argv[++i])) >= 24 && size <= 1024 && size % 8 == 0)
			;
		else if (!strcmp(argv[i], "--repeat") && i + 1 < argc && (repeat = atol(argv[++i])) > 0)
			;
		else if (!strcmp(argv[i], "--numbers"))
			numbers = 1;
		else if (!strcmp(argv[i], "--null"))
			pointer = NUL;
		else if (!strcmp(argv[i], "--wild"))
			pointer = WILD;
		else {
			fprintf(stderr, "kvm_compat_caps: bad argument '%s' (usage: [--abi v4|v5] [--struct-size N] [--null|--wild] [--repeat N] [--numbers])\n", argv[i]);
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
	unsigned long request_v4 = KVM_PPC_GET_COMPAT_CAPS_V4, request_v5 = KVM_PPC_GET_COMPAT_CAPS_V5;
#else
	unsigned long get_api_version = kvm_io(0x00), create_vm = kvm_io(0x01), check_extension = kvm_io(0x03);
	unsigned long request_v4 = kvmsim_ioc(powerpc, KVMSIM_IOC_READ, KVMSIM_KVMIO, KVM_PPC_GET_COMPAT_CAPS_NR,
	                                      sizeof(struct kvm_ppc_compat_caps_v4));
	unsigned long request_v5 = kvmsim_ioc(powerpc, KVMSIM_IOC_NONE, KVMSIM_KVMIO, KVM_PPC_GET_COMPAT_CAPS_NR, 0);
#endif
	if (numbers) {
		printf("{\"KVM_GET_API_VERSION\": %lu, \"KVM_CREATE_VM\": %lu, \"KVM_CHECK_EXTENSION\": %lu, "
		       "\"v4\": %lu, \"v5\": %lu}\n",
		       get_api_version, create_vm, check_extension, request_v4, request_v5);
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

	int v5;
	if (abi)
		v5 = !strcmp(abi, "v5");
	else if (ioctl(vm, check_extension, KVM_CAP_PPC_COMPAT_CAPS_V5) > 0)
		v5 = 1;
	else if (ioctl(vm, check_extension, KVM_CAP_PPC_COMPAT_CAPS_V4) > 0)
		v5 = 0;
	else
		return fail(3, "unsupported", "KVM_CHECK_EXTENSION", 0);

	unsigned long request = v5 ? request_v5 : request_v4;
	unsigned size_off = v5 ? 0 : 8, caps_off = 16;
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
		if (wanted < KVM_PPC_COMPAT_CAPS_SIZE_VER0 || wanted >= size)
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
	uint64_t caps = get64(buf + caps_off);
	if (caps & ~KVM_PPC_COMPAT_BITMASK)
		return fail(1, "kernel", "KVM_PPC_GET_COMPAT_CAPS", 0);

	static const struct { uint64_t bit; const char *name; } modes[] = {
		{KVM_PPC_COMPAT_CAP_POWER9, "power9"}, {KVM_PPC_COMPAT_CAP_POWER10, "power10"}, {KVM_PPC_COMPAT_CAP_POWER11, "power11"}};
	const char *recommended = NULL;
	printf("{\"abi\": \"%s\", \"compat_capabilities\": %llu, \"modes\": [", v5 ? "v5" : "v4", (unsigned long long)caps);
	for (unsigned i = 0, n = 0; i < 3; i++)
		if (caps & modes[i].bit) {
			printf("%s\"%s\"", n++ ? ", " : "", modes[i].name);
			recommended = modes[i].name;
		}
	if (recommended)
		printf("], \"recommended\": \"%s\"", recommended);
	else
		printf("], \"recommended\": null");
	if (repeat)
		printf(", \"ns_per_ioctl\": %.0f", ns_per_ioctl);
	printf("}\n");
	close(vm);
	close(dev);
	return 0;
}
