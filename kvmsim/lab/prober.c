/*
 * kvmsim's real-kernel prober: /init of a QEMU guest running a real Linux ppc64le kernel.
 *
 * It mounts /dev, /proc and /sys, loads the KVM modules packed beside it (kvm first, then
 * kvm-hv and kvm-pr, those the configuration packs), asks /dev/kvm every probe of kvmsim.user.probe.kvm_probes() -- the table is generated
 * into probes.h by kvmsim.lab.build, so the guest asks exactly what `kvmsim record` and the
 * simulator ask -- and prints one line per observation, then powers the guest off:
 *
 *   KVMSIM <kind>\t<key>\t<value>
 *
 * kinds: probe (an answer, formatted as kvmsim.user.probe.Answer.of_buffer does), module (a
 * finit_module result), uname, pagesize, cpuinfo (a line), meminfo (MemTotal), cpu (a /proc/device-tree cpu node
 * and its cpu-version), sysmodule (a /sys/module entry), stats (the VM's and vcpu 0's stats files,
 * hex, and the pid their ids name), fileop (what /dev/kvm, a VM fd, a vcpu fd, a TCE table's and a KVM device's
 * answer besides ioctl, as kvmsim.user.probe.file_ops writes it), dmesg (a kernel log line), done.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#ifndef MODULE_INIT_COMPRESSED_FILE
#define MODULE_INIT_COMPRESSED_FILE 4
#endif

/* the fuzz cases' VM fds fall back to /dev/kvm where their VM cannot be made */
/* FD_VCPU_VM: the type-0 VM, where its vcpu 0 was made; FD_VCPU_HV/PR: the fuzz VMs' vcpus 0 */
/* FD_DEVICE: the KVM device a keeps_device probe made (returns_fd 3); FD_XICS_HV/PR: the fuzz VMs' XICS */
enum probe_fd { FD_DEV, FD_VM, FD_VM_OR_DEV, FD_VM_HV, FD_VM_PR, FD_VCPU, FD_VCPU_VM, FD_VCPU_HV, FD_VCPU_PR, FD_DEVICE,
	FD_XICS_HV, FD_XICS_PR };
enum probe_arg { ARG_INT, ARG_BUF, ARG_ONE_REG }; /* ARG_ONE_REG: value is the id, head the 16-byte value */
#define PROBE_HEAD 48 /* a buffer's bytes given one by one (kvmsim.lab.build.PROBE_HEAD) */

struct probe {
	const char *name;
	enum probe_fd fd;
	unsigned long request;
	enum probe_arg kind;
	unsigned long value;   /* ARG_INT: the argument; ARG_BUF: the buffer's length */
	unsigned char head[PROBE_HEAD]; /* ARG_BUF: the first bytes (the struct) */
	unsigned char fill;             /* ARG_BUF: every byte past them ... */
	unsigned int poke_at;   /* ... but this one (0: none), which is */
	unsigned char poke;
	int returns_fd; /* 1: the answer is a new fd, closed at once; 2: kept open to the end (kept_fds);
	                 * 3: KVM_CREATE_DEVICE's, the buffer's u32 at 4, kept as device_fd where it is an XICS device */
	int readonly_from; /* ARG_BUF: read-only from this offset (0: all; -1: none) */
	int on_stack;      /* ARG_BUF: on this program's stack instead (at most 256 bytes) */
	const char *skip_under; /* not asked when this word is on the kernel command line (NULL: always) */
	int needs_device; /* asked only once device_fd is made */
	int device_at;    /* ARG_BUF: the u64 here is device_fd (-1: none) */
	long attr_group;  /* ARG_ONE_REG: the struct is kvm_device_attr {0, attr_group, value, addr} (-1: kvm_one_reg;
	                   * a long, so that group 0xffffffff is a group) */
	int closes_device; /* then device_fd is closed (the device's release) */
};

#include "probes.h" /* static const struct probe PROBES[]; KVM_CREATE_VM_REQ, KVM_CREATE_VCPU_REQ */

#define POINTEE_MAX 256 /* the most a {u64, pointer} struct's buffer is (kvmsim.lab.build.POINTEE_MAX) */
#define TAIL_SHOWN 1208 /* kvmsim.user.probe.TAIL_SHOWN: a struct kvm_sregs past its first 24 bytes */

static void line(const char *kind, const char *key, const char *value)
{
	printf("KVMSIM %s\t%s\t%s\n", kind, key, value);
	fflush(stdout);
}

static const char *errname(int e)
{
	const char *name = strerrorname_np(e);
	static char buf[32];
	if (name)
		return name;
	snprintf(buf, sizeof(buf), "errno %d", e);
	return buf;
}

static void hex(char *out, const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", p[i]);
	out[2 * n] = 0;
}

static void read_cmdline(char *cmdline, size_t size)
{
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	cmdline[0] = 0;
	if (fd >= 0) {
		ssize_t n = read(fd, cmdline, size - 1);
		cmdline[n > 0 ? n : 0] = 0;
		close(fd);
	}
}

/* Is this word on the kernel command line? */
static int on_cmdline(const char *wanted)
{
	char cmdline[1024];
	read_cmdline(cmdline, sizeof(cmdline));
	for (char *save, *word = strtok_r(cmdline, " \n", &save); word; word = strtok_r(NULL, " \n", &save))
		if (!strcmp(word, wanted))
			return 1;
	return 0;
}

/* The module's parameters as modprobe gives them: every "module.param=value" word of the
 * kernel command line whose module is this one (kvm_hv and kvm-hv are the same name). */
static void module_params(const char *module, char *out, size_t size)
{
	char cmdline[1024];
	read_cmdline(cmdline, sizeof(cmdline));
	size_t len = strlen(module), used = 0;
	out[0] = 0;
	for (char *save, *word = strtok_r(cmdline, " \n", &save); word; word = strtok_r(NULL, " \n", &save)) {
		int same = strlen(word) > len && word[len] == '.';
		for (size_t i = 0; same && i < len; i++)
			same = (word[i] == '-' ? '_' : word[i]) == (module[i] == '-' ? '_' : module[i]);
		if (same && strchr(word, '=')) {
			int w = snprintf(out + used, size - used, "%s%s", used ? " " : "", word + len + 1);
			if (w > 0 && (size_t)w < size - used)
				used += (size_t)w;
		}
	}
}

static void load(const char *path, const char *module)
{
	if (access(path, F_OK)) /* not packed for this configuration */
		return;
	char params[256];
	module_params(module, params, sizeof(params));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	long r = fd < 0 ? -1 : syscall(SYS_finit_module, fd, params, MODULE_INIT_COMPRESSED_FILE);
	line("module", path, r == 0 ? "0" : errname(errno));
	if (fd >= 0)
		close(fd);
}

static int vm_hv = -1, vm_pr = -1; /* the fuzz's VMs of types 1 and 2, made in main() */
static int vcpu = -1;              /* vcpu 0 of the type-0 VM, made in main() */
static int vcpu_hv = -1, vcpu_pr = -1; /* vcpu 0 of each fuzz VM, made in main() */
static int xics_hv = -1, xics_pr = -1; /* each fuzz VM's XICS device (kvm-xics or kvm-xive), made in main() */
static int kept_fds[16], kept;         /* the new fds of probes that keep theirs (returns_fd 2) */
static int device_fd = -1;             /* the KVM device a returns_fd 3 probe made (FD_DEVICE) */

/* A probe's new fd: closed, or kept to the end of the run; its answer is "fd". */
static void new_fd(const struct probe *p, int fd)
{
	if (p->returns_fd == 2 && kept < (int)(sizeof(kept_fds) / sizeof(kept_fds[0])))
		kept_fds[kept++] = fd;
	else
		close(fd);
}

static void ask_probe(const struct probe *p, int dev, int vm);

/* Is fd the anon-inode file of this kind (its /proc link "anon_inode:<kind>")? */
static int is_anon(int fd, const char *kind)
{
	char path[64], link[64] = "", want[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	snprintf(want, sizeof(want), "anon_inode:%s", kind);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	link[n > 0 ? n : 0] = 0;
	return !strcmp(link, want);
}

/* Is fd an XICS device: XICS's emulation (kvm-xics) or, on PowerNV, XICS-on-XIVE's (kvm-xive)? */
static int is_xics(int fd)
{
	return is_anon(fd, "kvm-xics") || is_anon(fd, "kvm-xive");
}

/* A KVM device of this type on vm whose file is of this kind (NULL: an XICS device, either
 * kind), else -1 (no VM, no such device, or another ops' file) */
static int device_of(int vm, uint32_t type, const char *kind)
{
	struct { uint32_t type, fd, flags; } cd = {type, 0, 0};
	if (vm < 0 || ioctl(vm, KVM_CREATE_DEVICE_REQ, &cd) < 0)
		return -1;
	if (kind ? !is_anon((int)cd.fd, kind) : !is_xics((int)cd.fd)) {
		close((int)cd.fd);
		return -1;
	}
	return (int)cd.fd;
}

/* vcpu connected to the XICS device as server 0 (KVM_ENABLE_CAP(KVM_CAP_IRQ_XICS), whatever it
 * answers: an HV vcpu without PAPR is connected and answered EINVAL), so that the fuzz's sources
 * and KVM_IRQ_LINEs reach a presenter */
static void connect_xics(int vcpu, int xics)
{
	struct { uint32_t cap, flags; uint64_t args[4]; uint8_t pad[64]; } ec = {KVM_CAP_IRQ_XICS_NR, 0, {0}, {0}};
	ec.args[0] = (uint64_t)xics;
	if (vcpu >= 0 && xics >= 0)
		(void)ioctl(vcpu, KVM_ENABLE_CAP_REQ, &ec);
}

static void run_probe(const struct probe *p, int dev, int vm)
{
	ask_probe(p, dev, vm);
	if (p->closes_device && device_fd >= 0) {
		close(device_fd);
		device_fd = -1;
	}
}

static void ask_probe(const struct probe *p, int dev, int vm)
{
	char answer[256 + 2 * TAIL_SHOWN], head[64];
	int fd = p->fd == FD_DEV ? dev : p->fd == FD_VM ? vm : p->fd == FD_VM_OR_DEV ? vm : p->fd == FD_VM_HV ? vm_hv
		: p->fd == FD_VM_PR ? vm_pr : p->fd == FD_VCPU ? vcpu : p->fd == FD_VCPU_VM ? (vcpu >= 0 ? vm : -1)
		: p->fd == FD_VCPU_HV ? vcpu_hv : p->fd == FD_DEVICE ? device_fd : p->fd == FD_XICS_HV ? xics_hv
		: p->fd == FD_XICS_PR ? xics_pr : vcpu_pr;
	int fuzzed = (p->fd >= FD_VM_OR_DEV && p->fd <= FD_VM_PR) || p->fd == FD_VCPU_HV || p->fd == FD_VCPU_PR
		|| p->fd == FD_XICS_HV || p->fd == FD_XICS_PR;
	if (fd < 0 && fuzzed) /* the fuzz's: /dev/kvm instead */
		fd = dev;
	if (fd < 0 || (p->skip_under && on_cmdline(p->skip_under)) || (p->needs_device && device_fd < 0))
		return;
	if (p->kind == ARG_ONE_REG) { /* struct kvm_one_reg {id, addr} (or any {u64, pointer}), addr a buffer
		* of poke_at bytes (16 if 0): the head, then fill; shown as kvmsim.user.probe.Answer.of_buffer does */
		static unsigned char val[POINTEE_MAX] __attribute__((aligned(16))), before[POINTEE_MAX];
		size_t n = p->poke_at ? p->poke_at : 16;
		memset(val, p->fill, n);
		memcpy(val, p->head, 16);
		memcpy(before, val, n);
		struct { unsigned long id, addr; } reg = {p->value, (unsigned long)val};
		struct { uint32_t flags, group; uint64_t attr, addr; } attr = {0, (uint32_t)p->attr_group, p->value,
		                                                               (uint64_t)(unsigned long)val};
		long r = p->attr_group >= 0 ? ioctl(fd, p->request, &attr) : ioctl(fd, p->request, &reg);
		if (r < 0)
			snprintf(head, sizeof(head), "%s", errname(errno));
		else
			snprintf(head, sizeof(head), "%ld", r);
		if (memcmp(before, val, n)) {
			char shown[2 * POINTEE_MAX + 1];
			size_t k = n < 24 ? n : 24;
			hex(shown, val, k);
			int off = snprintf(answer, sizeof(answer), "%s %s", head, shown);
			if (n > 24 && memcmp(before + 24, val + 24, n - 24)) {
				hex(shown, val + 24, n - 24);
				snprintf(answer + off, sizeof(answer) - off, " tail=%s", shown);
			}
			line("probe", p->name, answer);
		} else
			line("probe", p->name, head);
		return;
	}
	if (p->kind == ARG_INT) {
		long r = ioctl(fd, p->request, p->value);
		if (r < 0)
			snprintf(answer, sizeof(answer), "%s", errname(errno));
		else if (p->returns_fd) {
			new_fd(p, (int)r);
			snprintf(answer, sizeof(answer), "fd");
		} else
			snprintf(answer, sizeof(answer), "%ld", r);
		line("probe", p->name, answer);
		return;
	}
	size_t n = p->value;
	/* the buffer ends against an unmapped page, as the simulator maps it: a kernel that
	 * reads or writes past it faults, never sees another allocation's bytes.  With
	 * readonly_from k > 0 it starts k bytes below a page boundary, read-only above it. */
	size_t page = (size_t)sysconf(_SC_PAGESIZE), k = p->readonly_from > 0 ? (size_t)p->readonly_from : 0;
	size_t low = k ? page : 0, rw = (n - k + page - 1) / page * page, len = low + rw + page;
	unsigned char *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED || mprotect(map + low + rw, page, PROT_NONE)) {
		line("probe", p->name, "prober: no memory");
		return;
	}
	unsigned char *before = malloc(n), *buf = k ? map + low - k : map + rw - n;
	memset(before, p->fill, n);
	memcpy(before, p->head, n < PROBE_HEAD ? n : PROBE_HEAD);
	if (p->poke_at && p->poke_at < n)
		before[p->poke_at] = p->poke;
	if (p->device_at >= 0 && (size_t)p->device_at + 8 <= n) {
		uint64_t dfd = (uint64_t)device_fd;
		memcpy(before + p->device_at, &dfd, 8);
	}
	unsigned char stack_buf[256] __attribute__((aligned(16)));
	if (p->on_stack && n <= sizeof(stack_buf))
		buf = stack_buf;
	memcpy(buf, before, n);
	if (p->readonly_from >= 0 && mprotect(map + low, rw, PROT_READ)) {
		line("probe", p->name, "prober: no mprotect");
		return;
	}
	long r = ioctl(fd, p->request, buf);
	if (r < 0)
		snprintf(head, sizeof(head), "%s", errname(errno));
	else if (p->returns_fd == 3) { /* KVM_CREATE_DEVICE: kept where it is an XICS device, else unrecorded */
		uint32_t dfd;
		memcpy(&dfd, buf + 4, 4);
		if (is_xics((int)dfd)) {
			device_fd = (int)dfd;
			line("probe", p->name, "fd");
		} else
			close((int)dfd);
		free(before);
		munmap(map, len);
		return;
	} else if (p->returns_fd) { /* as kvmsim.user.probe.Probe.run: "fd", whatever the buffer holds */
		new_fd(p, (int)r);
		line("probe", p->name, "fd");
		free(before);
		munmap(map, len);
		return;
	} else
		snprintf(head, sizeof(head), "%ld", r);
	if (!memcmp(before, buf, n)) {
		line("probe", p->name, head);
	} else {
		char struct_hex[49];
		size_t k = n < 24 ? n : 24;
		hex(struct_hex, buf, k);
		int off = snprintf(answer, sizeof(answer), "%s %s", head, struct_hex);
		if (n > 24 && memcmp(before + 24, buf + 24, n - 24)) {
			if (n - 24 <= TAIL_SHOWN) {
				char tail[2 * TAIL_SHOWN + 1];
				hex(tail, buf + 24, n - 24);
				snprintf(answer + off, sizeof(answer) - off, " tail=%s", tail);
			} else
				snprintf(answer + off, sizeof(answer) - off, " tail=changed");
		}
		line("probe", p->name, answer);
	}
	free(before);
	munmap(map, len);
}

static void file_op(const char *which, const char *op, long r, const char *value)
{
	char key[32], text[64];
	snprintf(key, sizeof(key), "%s.%s", which, op);
	if (value)
		snprintf(text, sizeof(text), "%s", value);
	else if (r < 0)
		snprintf(text, sizeof(text), "%s", errname(errno));
	else
		snprintf(text, sizeof(text), "%ld", r);
	line("fileop", key, text);
}

/* read, write, pread, pwrite, lseek, mmap, poll, fstat and the /proc link of fd, as
 * kvmsim.user.probe.file_ops asks them (anon_inodes.FILE_OPS is what the simulator answers) */
static void file_ops(int fd, const char *which)
{
	char byte = 0, text[64];
	struct stat st, anon;
	file_op(which, "read", read(fd, &byte, 1), NULL);
	file_op(which, "write", write(fd, &byte, 1), NULL);
	file_op(which, "pread", pread(fd, &byte, 1, 0), NULL);
	file_op(which, "pwrite", pwrite(fd, &byte, 1, 0), NULL);
	file_op(which, "lseek", lseek(fd, 0, SEEK_CUR), NULL);
	void *map = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
	file_op(which, "mmap", -1, map == MAP_FAILED ? NULL : "mapped");
	if (map != MAP_FAILED)
		munmap(map, 4096);
	struct pollfd p = {.fd = fd, .events = POLLIN | POLLOUT};
	int ready = poll(&p, 1, 0), in = ready > 0 && (p.revents & POLLIN), out = ready > 0 && (p.revents & POLLOUT);
	file_op(which, "poll", 0, in && out ? "IN|OUT" : in ? "IN" : out ? "OUT" : "-");
	int efd = eventfd(0, EFD_CLOEXEC);
	if (fstat(fd, &st) < 0)
		file_op(which, "fstat", -1, NULL);
	else {
		if (S_ISCHR(st.st_mode))
			snprintf(text, sizeof(text), "chr %u:%u", major(st.st_rdev), minor(st.st_rdev));
		else if (efd >= 0 && !fstat(efd, &anon) && anon.st_dev == st.st_dev && anon.st_ino == st.st_ino)
			snprintf(text, sizeof(text), "anon_inode");
		else
			snprintf(text, sizeof(text), "mode %o", (unsigned)st.st_mode);
		file_op(which, "fstat", 0, text);
	}
	if (efd >= 0)
		close(efd);
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, text, sizeof(text) - 1);
	if (n >= 0)
		text[n] = 0;
	file_op(which, "link", n, n >= 0 ? text : NULL);
}

/* What the stats file of fd (KVM_GET_STATS_FD) reads from 0, as hex: header, id, descriptors, data */
static void stats(int fd, const char *which)
{
	static unsigned char buf[16384];
	static char text[2 * sizeof(buf) + 1];
	int sfd = ioctl(fd, KVM_GET_STATS_FD_REQ, 0);
	if (sfd < 0)
		return;
	ssize_t n = pread(sfd, buf, sizeof(buf), 0);
	if (n >= 0) {
		hex(text, buf, (size_t)n);
		line("stats", which, text);
	}
	file_ops(sfd, !strcmp(which, "vm") ? "vm-stats" : "vcpu-stats");
	close(sfd);
}

static void device_tree_cpus(void)
{
	DIR *d = opendir("/proc/device-tree/cpus");
	struct dirent *e;
	if (!d)
		return;
	while ((e = readdir(d))) {
		char path[512], value[32] = "none";
		unsigned char raw[8];
		if (e->d_name[0] == '.' || !strchr(e->d_name, '@'))
			continue;
		snprintf(path, sizeof(path), "/proc/device-tree/cpus/%s/cpu-version", e->d_name);
		int fd = open(path, O_RDONLY);
		if (fd >= 0) {
			if (read(fd, raw, sizeof(raw)) == 4)
				snprintf(value, sizeof(value), "0x%02x%02x%02x%02x", raw[0], raw[1], raw[2], raw[3]);
			close(fd);
		}
		line("cpu", e->d_name, value);
	}
	closedir(d);
}

static void sys_modules(void)
{
	static const char *const names[] = {"kvm", "kvm_hv", "kvm_pr"};
	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char path[64];
		snprintf(path, sizeof(path), "/sys/module/%s", names[i]);
		if (!access(path, F_OK))
			line("sysmodule", names[i], "present");
	}
}

static void cpuinfo(void)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char buf[512];
	if (!f)
		return;
	while (fgets(buf, sizeof(buf), f)) {
		buf[strcspn(buf, "\n")] = 0;
		if (buf[0])
			line("cpuinfo", "-", buf);
	}
	fclose(f);
}

static void meminfo(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char buf[256];
	unsigned long kb;
	if (!f)
		return;
	while (fgets(buf, sizeof(buf), f))
		if (sscanf(buf, "MemTotal: %lu kB", &kb) == 1) {
			snprintf(buf, sizeof(buf), "%lu", kb);
			line("meminfo", "MemTotal", buf);
		}
	fclose(f);
}

static void dmesg(void)
{
	int n = klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0);
	char *buf = malloc(n > 0 ? n + 1 : 1);
	n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, buf, n > 0 ? n : 0);
	if (n <= 0)
		return;
	buf[n] = 0;
	for (char *save, *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
		line("dmesg", "-", l);
	free(buf);
}

#ifdef KVMSIM_QEMU_L1
#include <sys/wait.h>

#include "qemu_l1.h" /* QEMU_ARGV (strace, then QEMU and its arguments) and QMP_IN: kvmsim.lab.qemu_l1 */

static void lines_of(const char *kind, const char *path)
{
	char text[4096];
	FILE *f = fopen(path, "r");
	if (!f) {
		line(kind, "-", "(none)");
		return;
	}
	while (fgets(text, sizeof(text), f)) {
		text[strcspn(text, "\r\n")] = 0;
		line(kind, "-", text);
	}
	fclose(f);
}

/* The L1's QEMU (kvmsim lab --qemu): QEMU_ARGV under strace, QMP_IN on its stdin; then its
 * exit status, what it answered on stdout (qmp) and stderr (qemu), and strace's ioctl lines. */
static void run_qemu(void)
{
	mkdir("/tmp", 0755);
	mount("tmpfs", "/tmp", "tmpfs", 0, NULL);
	int in = open("/tmp/qmp.in", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (in < 0 || write(in, QMP_IN, sizeof(QMP_IN) - 1) != (ssize_t)(sizeof(QMP_IN) - 1)) {
		line("qemuexit", "-", "prober: cannot write /tmp/qmp.in");
		return;
	}
	close(in);
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		int i = open("/tmp/qmp.in", O_RDONLY), o = open("/tmp/qmp.out", O_WRONLY | O_CREAT, 0644);
		int e = open("/tmp/qemu.err", O_WRONLY | O_CREAT, 0644);
		if (i < 0 || o < 0 || e < 0 || dup2(i, 0) < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
			_exit(126);
		char *const envp[] = {"PATH=/usr/bin", "HOME=/", NULL};
		execve(QEMU_ARGV[0], (char *const *)QEMU_ARGV, envp);
		_exit(127);
	}
	int status = 0;
	char text[32];
	if (pid < 0 || waitpid(pid, &status, 0) < 0)
		snprintf(text, sizeof(text), "prober: %s", errname(errno));
	else if (WIFEXITED(status))
		snprintf(text, sizeof(text), "%d", WEXITSTATUS(status));
	else
		snprintf(text, sizeof(text), "signal %d", WTERMSIG(status));
	line("qemuexit", "-", text);
	lines_of("qmp", "/tmp/qmp.out");
	lines_of("qemu", "/tmp/qemu.err");
	lines_of("strace", "/tmp/strace.out");
}
#endif

/* The last line the host reads; the guest's init then powers the machine off. */
static int finish(int init)
{
	line("done", "-", "-");
	if (init) {
		sync();
		reboot(RB_POWER_OFF);
	}
	return 0;
}

int main(void)
{
	struct utsname u;
	char value[64];
	/* the guest's init (PID 1) mounts, loads the modules, reads the log and powers off; run as
	 * an ordinary program (under kvmsim run) it only asks */
	int init = getpid() == 1;
	if (init) {
		mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
		mount("proc", "/proc", "proc", 0, NULL);
		mount("sysfs", "/sys", "sysfs", 0, NULL);
		load("/kvm.ko.xz", "kvm"); /* modprobe's order: the dependency, then kvm_hv, then kvm_pr */
		load("/kvm-hv.ko.xz", "kvm_hv");
		load("/kvm-pr.ko.xz", "kvm_pr");
	}
#ifdef KVMSIM_QEMU_L1
	(void)u;
	(void)value;
	run_qemu();
	return finish(init);
#endif
	uname(&u);
	line("uname", "release", u.release);
	line("uname", "machine", u.machine);
	snprintf(value, sizeof(value), "%ld", sysconf(_SC_PAGESIZE));
	line("pagesize", "-", value);
	cpuinfo();
	meminfo();
	device_tree_cpus();
	sys_modules();

	int dev = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	line("probe", "open", dev < 0 ? errname(errno) : "fd");
	int vm = -1;
	if (dev >= 0) {
		vm = ioctl(dev, KVM_CREATE_VM_REQ, 0);
		line("probe", "create vm", vm < 0 ? errname(errno) : "fd");
		if (vm >= 0) { /* as kvmsim.user.probe.run: vcpu 0 before every probe */
			vcpu = ioctl(vm, KVM_CREATE_VCPU_REQ, 0);
			line("probe", "create vcpu", vcpu < 0 ? errname(errno) : "fd");
		}
		vm_hv = ioctl(dev, KVM_CREATE_VM_REQ, 1);
		vm_pr = ioctl(dev, KVM_CREATE_VM_REQ, 2);
		vcpu_hv = vm_hv >= 0 ? ioctl(vm_hv, KVM_CREATE_VCPU_REQ, 0) : -1;
		vcpu_pr = vm_pr >= 0 ? ioctl(vm_pr, KVM_CREATE_VCPU_REQ, 0) : -1;
		xics_hv = device_of(vm_hv, 3, NULL); /* KVM_DEV_TYPE_XICS: XICS's emulation or XICS-on-XIVE */
		xics_pr = device_of(vm_pr, 3, NULL);
		connect_xics(vcpu_hv, xics_hv);
		connect_xics(vcpu_pr, xics_pr);
		for (unsigned i = 0; i < sizeof(PROBES) / sizeof(PROBES[0]); i++)
			run_probe(&PROBES[i], dev, vm);
		file_ops(dev, "dev");
		if (vm >= 0)
			file_ops(vm, "vm");
		if (vcpu >= 0)
			file_ops(vcpu, "vcpu");
		if (vm >= 0) { /* the stats files, their id of this task's pid */
			char pid[16];
			snprintf(pid, sizeof(pid), "%d", getpid());
			line("stats", "pid", pid);
			stats(vm, "vm");
			if (vcpu >= 0)
				stats(vcpu, "vcpu");
		}
		if (vm >= 0) { /* a TCE table's file, where the build has them (CONFIG_SPAPR_TCE_IOMMU) */
			int tce = ioctl(vm, KVM_CREATE_SPAPR_TCE_64_REQ, TCE_FILE_ARG);
			if (tce >= 0) {
				file_ops(tce, "spapr-tce");
				close(tce);
			}
		}
		if (vm >= 0) { /* KVM devices' files: XICS's emulation or XICS-on-XIVE's, VFIO's */
			static const struct { unsigned type; const char *kind; } devices[] = {
				{3, "kvm-xics"}, {3, "kvm-xive"}, {4, "kvm-vfio"}};
			for (unsigned i = 0; i < sizeof(devices) / sizeof(devices[0]); i++) {
				int fd = device_of(vm, devices[i].type, devices[i].kind);
				if (fd >= 0) {
					file_ops(fd, devices[i].kind);
					close(fd);
				}
			}
		}
		while (kept > 0)
			close(kept_fds[--kept]);
		if (device_fd >= 0)
			close(device_fd);
	}
	if (init)
		dmesg();
	return finish(init);
}
