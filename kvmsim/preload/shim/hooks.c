/* hooks.c: the libc entry points the shim intercepts.
 *
 * open/open64/openat/openat64 (and their _FORTIFY_SOURCE __*_2 forms), fopen and opendir of
 * /dev/kvm and the host's files (namei.c); the stat and access families of those paths and
 * of placeholders; ioctl on a placeholder (the simulated kernel), read/write and their kin,
 * lseek and readlink of /proc/self/fd/N on one (as the real device answers them); uname (the
 * machine field becomes $KVMSIM_MACHINE, the simulated kernel's architecture); getpagesize and
 * sysconf(_SC_PAGESIZE) ($KVMSIM_PAGE_SIZE, set for a POWER program under qemu-user).  Everything
 * else goes to libc untouched: close, dup, fcntl, fork, exec and fclose need no hook at all,
 * because a simulated file is a real descriptor (placeholder.c). */
#include "shim.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* (not inline in the hooks: their path is declared nonnull, and a NULL does arrive) */
static int empty(const char *p)
{
	return !p || !*p;
}

/* ---- the simulated kernel's calls --------------------------------------------------- */

static int emu_open(const char *path, int flags)
{
	uint32_t be_flags = htobe32((uint32_t)flags), result_flags;
	int fd;
	struct request req = {.type = OPEN,
	                      .fixed = &be_flags,
	                      .fixed_len = OPEN_SIZE,
	                      .tail = path,
	                      .tail_len = strlen(path),
	                      .cloexec = !!(flags & O_CLOEXEC)};
	return kvmsim_call(&req, &result_flags, &fd) < 0 ? -1 : fd;
}

/* ioctl on a placeholder; *foreign when the server says it is none of its own. */
static int emu_ioctl(int fd, const struct identity *id, unsigned long request, void *arg, int *foreign)
{
	unsigned char fixed[IOCTL_SIZE], window[WINDOW];
	struct usermem ahead;
	uint32_t be_fd = htobe32((uint32_t)fd), cmd = htobe32((uint32_t)request), flags;
	uint64_t a = htobe64((uint64_t)(uintptr_t)arg), dev = htobe64(id->dev), ino = htobe64(id->ino);
	int new_fd;
	memcpy(fixed, &be_fd, 4);
	memcpy(fixed + 4, &cmd, 4);
	memcpy(fixed + 8, &a, 8);
	memcpy(fixed + 16, &dev, 8);
	memcpy(fixed + 24, &ino, 8);
	usermem_find_stack(); /* before the shim's lock: it may read /proc/self/maps */
	usermem_begin(&ahead, 0, 0);
	size_t n = usermem_read_ahead(&ahead, (uint64_t)(uintptr_t)arg, window, sizeof(window));
	usermem_end(&ahead);
	uint64_t inner = 0; /* the value its struct points at (a kvm_one_reg's), as the struct says now */
	size_t at = INNER_AT((uint32_t)request);
	if (at && n >= at + sizeof(inner))
		memcpy(&inner, window + at, sizeof(inner));
	struct request req = {.type = IOCTL,
	                      .fixed = fixed,
	                      .fixed_len = IOCTL_SIZE,
	                      .tail = window,
	                      .tail_len = n,
	                      .arg = (uint64_t)(uintptr_t)arg,
	                      .inner = inner,
	                      .cloexec = 1}; /* anon_inode_getfd's O_CLOEXEC */
	long r = kvmsim_call(&req, &flags, &new_fd);
	*foreign = r >= 0 && (flags & RESULT_FOREIGN);
	if (r >= 0 && new_fd >= 0 && (flags & RESULT_FD_FIELD)) {
		/* the new fd goes into the struct (the kernel wrote it, with its own number, before
		 * answering): this program's number, in its own byte order, and the call returns 0;
		 * only inside the struct the request's size says (never elsewhere in this process: the
		 * size field's 13 bits, powerpc's, hold it in either encoding) */
		uint32_t v = (uint32_t)new_fd;
		if ((size_t)r + sizeof(v) > (((uint32_t)request >> 16) & 0x1fff)) {
			real.close(new_fd);
			errno = EIO;
			return -1;
		}
		memcpy((char *)arg + r, &v, sizeof(v));
		return 0;
	}
	return r < 0 ? -1 : new_fd >= 0 ? new_fd : (int)r;
}

/* open(2) of /dev/kvm: the flags keep their meaning for a character device. */
static int kvm_open(int flags)
{
	if (!cfg.dev_kvm) {
		errno = ENOENT;
		return -1;
	}
	if ((flags & O_CREAT) && (flags & O_EXCL)) {
		errno = EEXIST;
		return -1;
	}
	if (flags & O_DIRECTORY) {
		errno = ENOTDIR;
		return -1;
	}
	if ((flags & O_PATH) == O_PATH) /* a path-only fd: no file operations, nothing to simulate */
		return real.open("/dev/null", O_PATH | (flags & O_CLOEXEC));
	return emu_open("/dev/kvm", flags);
}

/* Is this open file this machine's real /dev/kvm (reached through a symlink)? */
static int is_real_dev_kvm(int fd)
{
	struct stat st;
	return real.fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(10, 232);
}

/* An open of a path that names no simulated file by name: the real one, unless the real
 * kernel says it opened /dev/kvm (a symlink to it). */
static int real_or_dev_kvm(int fd, int flags)
{
	if (fd < 0 || !is_real_dev_kvm(fd))
		return fd;
	real.close(fd);
	return kvm_open(flags);
}

/* ---- the open family ---------------------------------------------------------------- */

static mode_t mode_arg(int flags, va_list ap)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

#define OPEN_HOOK(name, dirfd_expr, dirfd_param...)                                                      \
	SHIM_API int name(dirfd_param const char *path, int flags, ...)                                   \
	{                                                                                                  \
		shim_ready();                                                                              \
		va_list ap;                                                                                \
		va_start(ap, flags);                                                                       \
		mode_t mode = mode_arg(flags, ap);                                                         \
		va_end(ap);                                                                                \
		struct lookup l;                                                                           \
		int kind = lookup(dirfd_expr, path, !(flags & O_NOFOLLOW), &l), fd;                       \
		if (kind == PATH_DEV_KVM)                                                                  \
			fd = kvm_open(flags);                                                              \
		else if (kind == PATH_VIEW)                                                                \
			fd = real.name(OPEN_ARGS_##dirfd_expr real_path(&l, path), flags, mode);           \
		else                                                                                       \
			fd = real_or_dev_kvm(real.name(OPEN_ARGS_##dirfd_expr path, flags, mode), flags);  \
		lookup_done(&l);                                                                           \
		return fd;                                                                                 \
	}
#define OPEN_ARGS_AT_FDCWD
#define OPEN_ARGS_dirfd dirfd,

OPEN_HOOK(open, AT_FDCWD, )
OPEN_HOOK(open64, AT_FDCWD, )
OPEN_HOOK(openat, dirfd, int dirfd, )
OPEN_HOOK(openat64, dirfd, int dirfd, )

SHIM_API int __open_2(const char *path, int flags) { return open(path, flags); }
SHIM_API int __open64_2(const char *path, int flags) { return open64(path, flags); }
SHIM_API int __openat_2(int dirfd, const char *path, int flags) { return openat(dirfd, path, flags); }
SHIM_API int __openat64_2(int dirfd, const char *path, int flags) { return openat64(dirfd, path, flags); }

SHIM_API FILE *fopen(const char *path, const char *mode)
{
	shim_ready();
	struct lookup l;
	FILE *f;
	if (lookup(AT_FDCWD, path, 1, &l) == PATH_DEV_KVM) {
		int fd = kvm_open(O_RDWR | (mode && strchr(mode, 'e') ? O_CLOEXEC : 0));
		f = fd < 0 ? NULL : fdopen(fd, mode);
		if (!f && fd >= 0) {
			int e = errno;
			real.close(fd);
			errno = e;
		}
	} else
		f = real.fopen(real_path(&l, path), mode);
	lookup_done(&l);
	return f;
}

SHIM_API FILE *fopen64(const char *path, const char *mode) { return fopen(path, mode); }

SHIM_API DIR *opendir(const char *path)
{
	shim_ready();
	struct lookup l;
	lookup(AT_FDCWD, path, 1, &l);
	DIR *d = real.opendir(real_path(&l, path));
	lookup_done(&l);
	return d;
}

/* ---- the stat and access families --------------------------------------------------- */

/* fstat of fd as the real kernel would show it: a placeholder is the simulated file. */
static int stat_of_fd(int fd, struct stat *st)
{
	int r = real.fstat(fd, st);
	if (r == 0 && (S_ISSOCK(st->st_mode) || S_ISREG(st->st_mode))) { /* a socket, or a vcpu's memfd */
		long kind = placeholder_kind(fd);
		if (kind != NOT_OURS)
			return placeholder_stat(kind, st);
	}
	return r;
}

SHIM_API int fstat(int fd, struct stat *st)
{
	shim_ready();
	return stat_of_fd(fd, st);
}

SHIM_API int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
	shim_ready();
	if ((flags & AT_EMPTY_PATH) && empty(path) && dirfd != AT_FDCWD)
		return stat_of_fd(dirfd, st);
	struct lookup l;
	int kind = lookup(dirfd, path, !(flags & AT_SYMLINK_NOFOLLOW), &l);
	int r = kind == PATH_DEV_KVM ? dev_kvm_stat(st) : real.fstatat(dirfd, real_path(&l, path), st, flags);
	lookup_done(&l);
	return r;
}

/* The stat family's other names (on 64-bit Linux struct stat64 is struct stat), as umockdev
 * wraps them: each is fstatat. */
#define STAT_HOOK(name, type, dirfd, flags)                                   \
	SHIM_API int name(const char *path, type *st)                         \
	{                                                                      \
		return fstatat(dirfd, path, (struct stat *)st, flags);         \
	}
STAT_HOOK(stat, struct stat, AT_FDCWD, 0)
STAT_HOOK(lstat, struct stat, AT_FDCWD, AT_SYMLINK_NOFOLLOW)
STAT_HOOK(stat64, struct stat64, AT_FDCWD, 0)
STAT_HOOK(lstat64, struct stat64, AT_FDCWD, AT_SYMLINK_NOFOLLOW)
SHIM_API int fstat64(int fd, struct stat64 *st) { return fstat(fd, (struct stat *)st); }
SHIM_API int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
	return fstatat(dirfd, path, (struct stat *)st, flags);
}

static void statx_from_stat(const struct stat *st, struct statx *stx)
{
	memset(stx, 0, sizeof(*stx));
	stx->stx_mask = STATX_BASIC_STATS;
	stx->stx_mode = (uint16_t)st->st_mode;
	stx->stx_nlink = (uint32_t)st->st_nlink;
	stx->stx_uid = st->st_uid;
	stx->stx_gid = st->st_gid;
	stx->stx_ino = st->st_ino;
	stx->stx_blksize = (uint32_t)st->st_blksize;
	stx->stx_rdev_major = major(st->st_rdev);
	stx->stx_rdev_minor = minor(st->st_rdev);
	stx->stx_dev_major = major(st->st_dev);
	stx->stx_dev_minor = minor(st->st_dev);
}

/* statx(2), as coreutils' stat and ls call it */
SHIM_API int statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *stx)
{
	shim_ready();
	struct lookup l;
	struct stat st;
	int r;
	long kind;
	if (!real.statx) {
		errno = ENOSYS;
		return -1;
	}
	if ((flags & AT_EMPTY_PATH) && empty(path) && dirfd != AT_FDCWD) {
		r = real.statx(dirfd, path, flags, mask, stx);
		if (r == 0 && (S_ISSOCK(stx->stx_mode) || S_ISREG(stx->stx_mode)) &&
		    (kind = placeholder_kind(dirfd)) != NOT_OURS) {
			if ((r = placeholder_stat(kind, &st)) == 0)
				statx_from_stat(&st, stx);
		}
		return r;
	}
	kind = lookup(dirfd, path, !(flags & AT_SYMLINK_NOFOLLOW), &l);
	if (kind == PATH_DEV_KVM) {
		r = dev_kvm_stat(&st);
		if (r == 0)
			statx_from_stat(&st, stx);
	} else
		r = real.statx(dirfd, real_path(&l, path), flags, mask, stx);
	lookup_done(&l);
	return r;
}

/* access(2)/faccessat(2) of the simulated /dev/kvm: it exists where the host has it */
SHIM_API int faccessat(int dirfd, const char *path, int mode, int flags)
{
	shim_ready();
	struct lookup l;
	struct stat st;
	int kind = lookup(dirfd, path, !(flags & AT_SYMLINK_NOFOLLOW), &l);
	int r = kind == PATH_DEV_KVM ? dev_kvm_stat(&st) : real.faccessat(dirfd, real_path(&l, path), mode, flags);
	lookup_done(&l);
	return r;
}

/* access(2) stays access(2) on its way down: qemu-user translates an access() path into its
 * sysroot (-L) and not a faccessat() one, so a program asking after a file of its sysroot
 * (QEMU's slof.bin) must not be told ENOENT because the shim rewrote the call */
SHIM_API int access(const char *path, int mode)
{
	shim_ready();
	struct lookup l;
	struct stat st;
	int kind = lookup(AT_FDCWD, path, 1, &l);
	int r = kind == PATH_DEV_KVM ? dev_kvm_stat(&st) : real.access(real_path(&l, path), mode);
	lookup_done(&l);
	return r;
}

/* ---- ioctl -------------------------------------------------------------------------- */

SHIM_API int ioctl(int fd, unsigned long request, ...)
{
	shim_ready();
	va_list ap;
	va_start(ap, request);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	struct identity id;
	int foreign = 0;
	/* do_vfs_ioctl() answers these for any fd, before the driver: on the placeholder itself,
	 * so close-on-exec and non-blocking really change on this process's descriptor */
	if (request == FIOCLEX || request == FIONCLEX || request == FIONBIO || request == FIOASYNC ||
	    !is_placeholder(fd, &id))
		return real.ioctl(fd, request, arg);
	int r = emu_ioctl(fd, &id, request, arg, &foreign);
	return foreign ? real.ioctl(fd, request, arg) : r;
}

/* ---- what the real device answers besides ioctl (anon_inodes.FILE_OPS, measured on an x86
 * /dev/kvm and by the lab on every ppc64le kernel; its errnos are generated into
 * kvmsim_wire.h): read, write and their kin have no file operation (EINVAL), pread/pwrite on
 * a VM fd are ESPIPE (an anon inode file has no FMODE_PREAD); lseek is 0 (noop_llseek); mmap
 * is ENODEV, as on the socket already. */

/* The errno of operation op on placeholder fd: its kind's (the server says which). */
static int file_op_err(int fd, size_t op)
{
	const struct file_kind *k = file_kind_of(placeholder_kind(fd));
	return k ? *(const int *)((const char *)k + op) : EBADF;
}
#define FILE_OP_ERR(fd, op) file_op_err(fd, offsetof(struct file_kind, op))

/* A file operation on a placeholder: its kind's errno, or (0) the placeholder's own answer (a
 * stats file's read: the memory file holds what it reads). */
#define FAILS_ON_PLACEHOLDER(type, name, params, args, err)                                              \
	SHIM_API type name params                                                                          \
	{                                                                                                  \
		struct identity id;                                                                        \
		shim_ready();                                                                              \
		if (is_placeholder(fd, &id)) {                                                             \
			int e = (err);                                                                     \
			if (e) {                                                                           \
				errno = e;                                                                 \
				return -1;                                                                 \
			}                                                                                  \
		}                                                                                          \
		return real.name args;                                                                     \
	}

FAILS_ON_PLACEHOLDER(ssize_t, read, (int fd, void *buf, size_t n), (fd, buf, n), FILE_OP_ERR(fd, read))
FAILS_ON_PLACEHOLDER(ssize_t, write, (int fd, const void *buf, size_t n), (fd, buf, n), FILE_OP_ERR(fd, write))
FAILS_ON_PLACEHOLDER(ssize_t, pread, (int fd, void *buf, size_t n, off_t off), (fd, buf, n, off), FILE_OP_ERR(fd, pread))
FAILS_ON_PLACEHOLDER(ssize_t, pwrite, (int fd, const void *buf, size_t n, off_t off), (fd, buf, n, off),
                     FILE_OP_ERR(fd, pwrite))
FAILS_ON_PLACEHOLDER(ssize_t, readv, (int fd, const struct iovec *iov, int n), (fd, iov, n), FILE_OP_ERR(fd, read))
FAILS_ON_PLACEHOLDER(ssize_t, writev, (int fd, const struct iovec *iov, int n), (fd, iov, n), FILE_OP_ERR(fd, write))
/* shutdown(2) is ENOTSOCK on the device; on the placeholder it would read as the last close */
FAILS_ON_PLACEHOLDER(int, shutdown, (int fd, int how), (fd, how), ENOTSOCK)
SHIM_API ssize_t pread64(int fd, void *buf, size_t n, off_t off) { return pread(fd, buf, n, off); }
SHIM_API ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) { return pwrite(fd, buf, n, off); }

SHIM_API off_t lseek(int fd, off_t off, int whence)
{
	struct identity id;
	shim_ready();
	if (!is_placeholder(fd, &id))
		return real.lseek(fd, off, whence);
	int err = FILE_OP_ERR(fd, lseek); /* 0: noop_llseek's f_pos, never moved by it; else no .llseek */
	if (err) {
		errno = err;
		return -1;
	}
	off_t pos = real.lseek(fd, 0, SEEK_CUR); /* a memory file's: where its reads got to; a socket has none */
	return pos < 0 ? 0 : pos;
}

SHIM_API off_t lseek64(int fd, off_t off, int whence) { return lseek(fd, off, whence); }

/* mmap(2) of a placeholder whose kind has no .mmap (a stats file's memory file would map) is
 * ENODEV; any other mapping is the kernel's, asked directly (never a hook of the shim's own, nor
 * init from here: a placeholder exists only once the shim is running). */
SHIM_INTERNAL void *sys_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

SHIM_API void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	struct identity id;
	if (fd >= 0 && !(flags & MAP_ANONYMOUS) && shim_running() && is_placeholder(fd, &id)) {
		const struct file_kind *k = file_kind_of(placeholder_kind(fd));
		if (k && !k->mapped) {
			errno = ENODEV;
			return MAP_FAILED;
		}
	}
	return sys_mmap(addr, len, prot, flags, fd, off);
}

SHIM_API void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return mmap(addr, len, prot, flags, fd, off);
}

/* ---- readlink of /proc/self/fd/N ---------------------------------------------------- */

/* N when path is /proc/self/fd/N, /proc/thread-self/fd/N or /proc/<this pid>/fd/N; else -1. */
static int own_fd_link(const char *path)
{
	const char *p;
	char *end;
	if (empty(path) || strncmp(path, "/proc/", 6))
		return -1;
	p = path + 6;
	if (!strncmp(p, "self/", 5))
		p += 5;
	else if (!strncmp(p, "thread-self/", 12))
		p += 12;
	else {
		long pid = strtol(p, &end, 10);
		if (end == p || *end != '/' || pid != (long)self_pid())
			return -1;
		p = end + 1;
	}
	if (strncmp(p, "fd/", 3) || p[3] < '0' || p[3] > '9')
		return -1;
	long fd = strtol(p + 3, &end, 10);
	return *end || fd > INT_MAX ? -1 : (int)fd;
}

/* What the link of a placeholder reads (in buf), or NULL when fd is none. */
static const char *placeholder_link(int fd, char *buf, size_t size)
{
	long kind = fd < 0 ? NOT_OURS : placeholder_kind(fd);
	const struct file_kind *k = file_kind_of(kind);
	if (!k)
		return NULL;
	snprintf(buf, size, k->link, kind & ((1L << KIND_SHIFT) - 1)); /* a vcpu's id; no other has a %ld */
	return buf;
}

static ssize_t put_link(const char *text, char *buf, size_t size)
{
	size_t n = strlen(text);
	if (!size) {
		errno = EINVAL;
		return -1;
	}
	n = n < size ? n : size; /* readlink(2) truncates and never terminates */
	memcpy(buf, text, n);
	return (ssize_t)n;
}

SHIM_API ssize_t readlink(const char *path, char *buf, size_t size)
{
	shim_ready();
	char vcpu[40];
	const char *text = placeholder_link(own_fd_link(path), vcpu, sizeof(vcpu));
	return text ? put_link(text, buf, size) : real.readlink(path, buf, size);
}

SHIM_API ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t size)
{
	shim_ready();
	char vcpu[40];
	const char *text = placeholder_link(own_fd_link(path), vcpu, sizeof(vcpu)); /* an absolute path ignores dirfd */
	return text ? put_link(text, buf, size) : real.readlinkat(dirfd, path, buf, size);
}

/* ---- the page size ------------------------------------------------------------------ */

/* A POWER program under qemu-user is told this machine's page size (qemu-user's auxv); the
 * host it runs on has its own, 64K on most: what getpagesize() and sysconf(_SC_PAGESIZE) say
 * (QEMU sizes its HPT pages and VRMA from it).  A native program keeps the real one.  Both may
 * be called before the shim's init, by a runtime preloaded ahead of it (ASan's): they read
 * their variable themselves and fall through to glibc's own entry points, never to dlsym. */
extern int __getpagesize(void);
extern long __sysconf(int);

static long host_page_size(void) /* $KVMSIM_PAGE_SIZE, 0 where unset */
{
	static long size = -1; /* read once: every thread reads the same */
	if (size < 0) {
		const char *page = getenv("KVMSIM_PAGE_SIZE");
		size = page && (!strcmp(page, "4096") || !strcmp(page, "65536")) ? atol(page) : 0;
	}
	return size;
}

SHIM_API int getpagesize(void)
{
	long size = host_page_size();
	return size ? (int)size : __getpagesize();
}

SHIM_API long sysconf(int name)
{
	long size = host_page_size();
	return size && name == _SC_PAGESIZE ? size : __sysconf(name); /* _SC_PAGE_SIZE is _SC_PAGESIZE */
}

/* ---- uname -------------------------------------------------------------------------- */

SHIM_API int uname(struct utsname *buf)
{
	shim_ready();
	int r = real.uname(buf);
	if (r == 0 && cfg.machine && *cfg.machine) {
		strncpy(buf->machine, cfg.machine, sizeof(buf->machine) - 1);
		buf->machine[sizeof(buf->machine) - 1] = '\0';
	}
	return r;
}
