/*
 * fdops: what a program does with simulated descriptors besides ioctl, one line each:
 *   rw      read/write/pread/pwrite on /dev/kvm and a VM fd: the errno names (EINVAL as the
 *           real device), lseek's result, mmap's errno (ENODEV)
 *   fstat   /dev/kvm: "chr 10:232", a VM fd: the same dev/ino/mode as an eventfd's anon inode
 *   fclose  5000 x fopen/fclose of /dev/kvm (no EMFILE), then a regular file opened at the
 *           number the last stream had answers FIONREAD with its size (not the simulator)
 *   dup3    dup3(fd, vm, 42) fails EINVAL and vm still answers; dup3(dev, vm, 0) makes vm /dev/kvm's
 *   tce     (POWER) a TCE table's file: read/write/pread/pwrite/lseek's errnos, its link and fstat;
 *           its LIOBN busy while the fd is closed but still mapped, free once unmapped (the
 *           kernel's release at the last reference); what one mapping writes the next one reads
 *   xics    (POWER) KVM_CREATE_DEVICE(XICS): the fd in the struct and its link; KVM_ENABLE_CAP
 *           (KVM_CAP_IRQ_XICS) of fds that are not open, not KVM devices (stdin, the VM) and the
 *           device; a source set, the ICP's CPPR opened, KVM_IRQ_LINE, the ICP's state; closed,
 *           the VM takes a new XICS at once (the kernel's release at the last close)
 *   stats   (POWER) the VM's and vcpu 0's stats files: a byte read, then write/pread/pwrite/lseek/
 *           mmap as the lab's prober asks them, the link; the header's counts and the id string
 *           (its pid the caller's), the first descriptor's name
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <sys/utsname.h>

/* _IO(0xAE, n): the powerpc encoding, or the generic one on x86 (what uname says the host is) */
static unsigned long CHECK_EXTENSION = 0x2000ae03UL, CREATE_VM = 0x2000ae01UL, API_VERSION = 0x2000ae00UL;

static const char *err(long r)
{
	return r < 0 ? strerrorname_np(errno) : "ok";
}

int main(int argc, char **argv)
{
	const char *what = argc > 1 ? argv[1] : "rw";
	struct utsname u;
	if (uname(&u) == 0 && !strcmp(u.machine, "x86_64"))
		CHECK_EXTENSION = 0xae03UL, CREATE_VM = 0xae01UL, API_VERSION = 0xae00UL;
	int dev = open("/dev/kvm", O_RDWR | O_CLOEXEC), vm = ioctl(dev, CREATE_VM, 0);
	char buf[8] = {0};
	if (!strcmp(what, "rw")) {
		for (int i = 0; i < 2; i++) {
			int fd = i ? vm : dev;
			const char *r = err(read(fd, buf, sizeof(buf)));
			const char *w = err(write(fd, buf, sizeof(buf)));
			const char *pr = err(pread(fd, buf, sizeof(buf), 0));
			const char *pw = err(pwrite(fd, buf, sizeof(buf), 0));
			long seek = (long)lseek(fd, 5, SEEK_SET);
			void *m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
			printf("%s read=%s write=%s pread=%s pwrite=%s lseek=%ld mmap=%s\n", i ? "vm" : "dev", r, w, pr, pw,
			       seek, m == MAP_FAILED ? strerrorname_np(errno) : "ok");
		}
	} else if (!strcmp(what, "fstat")) {
		struct stat d, v, e;
		int efd = eventfd(0, EFD_CLOEXEC);
		fstat(dev, &d);
		fstat(vm, &v);
		fstat(efd, &e);
		printf("dev %s %u:%u %o\n", S_ISCHR(d.st_mode) ? "chr" : "other", major(d.st_rdev), minor(d.st_rdev),
		       d.st_mode & 07777);
		printf("vm %s\n", v.st_dev == e.st_dev && v.st_ino == e.st_ino && v.st_mode == e.st_mode ? "anon_inode" : "other");
	} else if (!strcmp(what, "fclose")) {
		int last = -1;
		for (int i = 0; i < 5000; i++) {
			FILE *f = fopen("/dev/kvm", "r+");
			if (!f) {
				printf("fopen %d: %s\n", i, strerrorname_np(errno));
				return 1;
			}
			last = fileno(f);
			fclose(f);
		}
		int fd = open(argv[2], O_RDONLY);
		int n = -1;
		const char *r = err(ioctl(fd, FIONREAD, &n));
		printf("same=%d fionread=%s %d\n", fd == last, r, n);
	} else if (!strcmp(what, "tce")) {
		struct { uint64_t liobn; uint32_t page_shift, flags; uint64_t offset, size; } a = {1, 12, 0, 0, 1 << 10};
		const unsigned long CREATE_TCE64 = 0x8020aea8UL; /* _IOW(KVMIO, 0xa8, struct kvm_create_spapr_tce_64) */
		int tce = ioctl(vm, CREATE_TCE64, &a);
		if (tce < 0) {
			printf("tce %s\n", strerrorname_np(errno));
			return 0;
		}
		const char *r = err(read(tce, buf, sizeof(buf))), *w = err(write(tce, buf, sizeof(buf)));
		const char *pr = err(pread(tce, buf, sizeof(buf), 0)), *pw = err(pwrite(tce, buf, sizeof(buf), 0));
		const char *seek = err(lseek(tce, 5, SEEK_SET));
		printf("tce read=%s write=%s pread=%s pwrite=%s lseek=%s\n", r, w, pr, pw, seek);
		char path[64], link[64] = "";
		struct stat t, e;
		int efd = eventfd(0, EFD_CLOEXEC);
		snprintf(path, sizeof(path), "/proc/self/fd/%d", tce);
		ssize_t n = readlink(path, link, sizeof(link) - 1);
		link[n > 0 ? n : 0] = 0;
		fstat(tce, &t);
		fstat(efd, &e);
		printf("tce link=%s fstat=%s\n", link, t.st_dev == e.st_dev && t.st_ino == e.st_ino ? "anon_inode" : "other");
		volatile unsigned char *m = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, tce, 0);
		if (m == MAP_FAILED) {
			printf("tce mmap=%s\n", strerrorname_np(errno));
			return 0;
		}
		m[4097] = 0x5a;
		close(tce);
		const char *mapped = err(ioctl(vm, CREATE_TCE64, &a)); /* the mapping holds the file */
		munmap((void *)m, 8192);
		int again = ioctl(vm, CREATE_TCE64, &a);
		printf("tce closed but mapped=%s unmapped=%s\n", mapped, err(again));
		volatile unsigned char *m2 = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, again, 0);
		m2[1] = 0xa5;
		volatile unsigned char *m3 = mmap(NULL, 4096, PROT_READ, MAP_SHARED, again, 0);
		printf("tce fresh=%d shared=%d\n", m2[4097], m3[1]); /* a new table's pages are zeroed */
		/* a window whose offset + size wraps below 2^64 >> 34, of 2^64 - 1 TCEs: their pages wrap
		 * to none (kvmppc_tce_pages in an unsigned long), a table of no pages */
		struct { uint64_t liobn; uint32_t page_shift, flags; uint64_t offset, size; } wrap = {2, 34, 0, 1 << 20, ~0ULL};
		int wrapped = ioctl(vm, CREATE_TCE64, &wrap);
		printf("tce wrapped=%s\n", err(wrapped));
		close(wrapped);
	} else if (!strcmp(what, "xics")) {
		/* the powerpc encodings: _IO, _IOW (0x80000000 | size << 16) and _IOWR (0xc0000000 | ...) */
		const unsigned long CREATE_VCPU = 0x2000ae41UL, ENABLE_CAP = 0x8068aea3UL, CREATE_DEVICE = 0xc00caee0UL;
		const unsigned long SET_ATTR = 0x8018aee1UL, GET_REG = 0x8010aeabUL, SET_REG = 0x8010aeacUL;
		const unsigned long IRQ_LINE = 0x8008ae61UL;
		const uint64_t ICP_STATE = 0x103000000000008cULL; /* KVM_REG_PPC | KVM_REG_SIZE_U64 | 0x8c */
		int vcpu = ioctl(vm, CREATE_VCPU, 0);
		struct { uint32_t cap, flags; uint64_t args[4]; uint8_t pad[64]; } c = {.cap = 68}; /* KVM_CAP_PPC_PAPR */
		ioctl(vcpu, ENABLE_CAP, &c);
		struct { uint32_t type, fd, flags; } cd = {3, 0xeeee, 0}; /* KVM_DEV_TYPE_XICS */
		int r = ioctl(vm, CREATE_DEVICE, &cd);
		char path[64], link[64] = "";
		snprintf(path, sizeof(path), "/proc/self/fd/%u", cd.fd);
		ssize_t n = readlink(path, link, sizeof(link) - 1);
		link[n > 0 ? n : 0] = 0;
		printf("xics create=%s returned=%d link=%s\n", err(r), r, link);
		const char *names[4];
		uint64_t fds[4] = {999, 0, (uint64_t)vm, cd.fd};
		for (int i = 0; i < 4; i++) {
			c.cap = 92; /* KVM_CAP_IRQ_XICS: args[0] the device's fd, args[1] the server number */
			c.args[0] = fds[i];
			c.args[1] = 0;
			names[i] = err(ioctl(vcpu, ENABLE_CAP, &c));
		}
		printf("xics connect 999=%s stdin=%s vm=%s xics=%s\n", names[0], names[1], names[2], names[3]);
		uint64_t state = 5ULL << 32, icp = 0xffULL << 56 | 0xffULL << 24 | 0xffULL << 16; /* server 0, priority 5 */
		struct { uint32_t flags, group; uint64_t attr, addr; } a = {0, 1, 4096, (uint64_t)(uintptr_t)&state};
		struct { uint64_t id, addr; } reg = {ICP_STATE, (uint64_t)(uintptr_t)&icp};
		const char *set = err(ioctl(cd.fd, SET_ATTR, &a)), *cppr = err(ioctl(vcpu, SET_REG, &reg));
		struct { uint32_t irq, level; } line = {4096, 1};
		const char *raised = err(ioctl(vm, IRQ_LINE, &line));
		icp = 0;
		const char *got = err(ioctl(vcpu, GET_REG, &reg));
		printf("xics source=%s cppr=%s irq_line=%s icp=%s %#llx\n", set, cppr, raised, got, (unsigned long long)icp);
		close(cd.fd);
		struct { uint32_t type, fd, flags; } again = {3, 0, 0};
		printf("xics recreate=%s\n", err(ioctl(vm, CREATE_DEVICE, &again)));
		/* a device's release is done when its last close returns: the next call finds the VM
		 * without an interrupt controller (KVM_IRQ_LINE: ENXIO), every time */
		int at_once = 0;
		for (int i = 0; i < 100; i++) {
			close(again.fd);
			at_once += ioctl(vm, IRQ_LINE, &line) < 0 && errno == ENXIO;
			again.fd = 0;
			if (ioctl(vm, CREATE_DEVICE, &again) < 0)
				break;
		}
		printf("xics released at once=%d/100\n", at_once);
	} else if (!strcmp(what, "stats")) {
		const unsigned long GET_STATS_FD = 0x2000aeceUL, CREATE_VCPU = 0x2000ae41UL;
		int vcpu = ioctl(vm, CREATE_VCPU, 0);
		int fds[2] = {ioctl(vm, GET_STATS_FD, 0), ioctl(vcpu, GET_STATS_FD, 0)};
		for (int i = 0; i < 2; i++) {
			int fd = fds[i];
			if (fd < 0) {
				printf("stats %s\n", strerrorname_np(errno));
				return 0;
			}
			char byte, link[64] = "", path[64];
			long r = read(fd, &byte, 1);
			const char *w = err(write(fd, &byte, 1));
			long pr = pread(fd, &byte, 1, 0);
			const char *pw = err(pwrite(fd, &byte, 1, 0));
			long seek = (long)lseek(fd, 0, SEEK_CUR);
			void *m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
			snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
			ssize_t n = readlink(path, link, sizeof(link) - 1);
			link[n > 0 ? n : 0] = 0;
			printf("%s read=%ld write=%s pread=%ld pwrite=%s lseek=%ld mmap=%s\n", link, r, w, pr, pw, seek,
			       m == MAP_FAILED ? strerrorname_np(errno) : "ok");
			uint32_t h[6];
			char id[49] = "", name[49] = "";
			pread(fd, h, sizeof(h), 0);
			pread(fd, id, 48, h[3]);
			pread(fd, name, 48, h[4] + 16);
			printf("name_size=%u num_desc=%u id=%s first=%s pid=%s\n", h[1], h[2], id, name,
			       atoi(strchr(id, '-') + 1) == getpid() ? "mine" : "other");
		}
		/* read live: KVM_INTERRUPT queues one (vcpu->stat.queue_intr++), the open file shows it */
		uint32_t h[6];
		pread(fds[1], h, sizeof(h), 0);
		for (uint32_t i = 0; i < h[2]; i++) {
			struct { uint32_t flags; int16_t exponent; uint16_t size; uint32_t offset, bucket; char name[48]; } d;
			pread(fds[1], &d, sizeof(d), h[4] + i * sizeof(d));
			if (strcmp(d.name, "queue_intr"))
				continue;
			uint64_t before = 1, after = 0;
			unsigned irq = 5;
			pread(fds[1], &before, 8, h[5] + d.offset);
			ioctl(vcpu, 0x8004ae86UL, &irq); /* KVM_INTERRUPT */
			pread(fds[1], &after, 8, h[5] + d.offset);
			printf("queue_intr %llu then %llu\n", (unsigned long long)before, (unsigned long long)after);
		}
	} else if (!strcmp(what, "dup3")) {
		const char *bad = err(dup3(dev, vm, 42));
		int still = ioctl(vm, CHECK_EXTENSION, 3); /* KVM_CAP_USER_MEMORY: 1 on every kernel */
		const char *then = err(dup3(dev, vm, 0));
		int api = ioctl(vm, API_VERSION, 0);
		printf("dup3=%s vm=%d then=%s api=%d\n", bad, still, then, api);
	}
	return 0;
}
