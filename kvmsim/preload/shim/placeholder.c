/* placeholder.c: is this fd one of the server's placeholders, and for which simulated file?
 *
 * The real kernel answers, never a table of ours: a placeholder is a socket whose peer is
 * the server's process (SO_PEERCRED of a socketpair is the process that made it, which no
 * other user can be); its identity is the socket inode's dev/ino, and the server, which
 * alone knows its placeholders, answers any other (the shim's own connection) as foreign.
 * The placeholder of a file that maps pages (a vcpu's kvm_run, a TCE table) is a memfd the server
 * made: an unlinked regular file on the memfd device is the server's only when the server says so.
 * Any other fd costs one fstat. */
#include "shim.h"

#include <errno.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <endian.h>

/* What the server says the file of identity id is: NOT_OURS, or its kind's code << KIND_SHIFT |
 * the file's id (file_kind_of() reads it). */
static long identify(const struct identity *id)
{
	unsigned char req[IDENTIFY_SIZE];
	uint32_t flags;
	int new_fd;
	uint64_t dev = htobe64(id->dev), ino = htobe64(id->ino);
	memcpy(req, &dev, 8);
	memcpy(req + 8, &ino, 8);
	struct request r = {.type = IDENTIFY, .fixed = req, .fixed_len = sizeof(req)};
	return kvmsim_call(&r, &flags, &new_fd);
}

/* The device every memfd's inode lives on (the kernel's internal shm mount), learnt once:
 * a vcpu's placeholder is a memfd of the server's. */
static dev_t memfd_device(void)
{
	static dev_t dev;
	static int known; /* 0 not yet, 1 known, -1 none (no memfd_create here) */
	int k = __atomic_load_n(&known, __ATOMIC_ACQUIRE);
	if (!k) {
		struct stat st;
		int fd = memfd_create("kvmsim-shim", MFD_CLOEXEC);
		k = fd >= 0 && real.fstat(fd, &st) == 0 ? 1 : -1;
		if (k == 1)
			__atomic_store_n(&dev, st.st_dev, __ATOMIC_RELAXED);
		if (fd >= 0)
			real.close(fd);
		__atomic_store_n(&known, k, __ATOMIC_RELEASE);
	}
	return k == 1 ? __atomic_load_n(&dev, __ATOMIC_RELAXED) : (dev_t)-1;
}

SHIM_INTERNAL int is_placeholder(int fd, struct identity *id)
{
	int e = errno, yes = 0;
	struct ucred cred;
	socklen_t len = sizeof(cred);
	struct stat st;
	if (fd >= 0 && real.fstat(fd, &st) == 0) {
		id->dev = (uint64_t)st.st_dev;
		id->ino = (uint64_t)st.st_ino;
		if (S_ISSOCK(st.st_mode))
			yes = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.pid > 0 &&
			      cred.pid == kvmsim_server_pid();
		else if (S_ISREG(st.st_mode) && st.st_nlink == 0 && st.st_dev == memfd_device())
			yes = file_kind_of(identify(id)) != NULL; /* an unlinked memfd: ours if the server says so */
	}
	errno = e;
	return yes;
}

/* What the server says fd is: NOT_OURS, or a kind and the file's id as identify() gives them
 * (errno untouched). */
SHIM_INTERNAL long placeholder_kind(int fd)
{
	struct identity id;
	int e = errno;
	if (!is_placeholder(fd, &id))
		return NOT_OURS;
	long kind = identify(&id);
	errno = e;
	return file_kind_of(kind) ? kind : NOT_OURS;
}

/* A stat of the simulated /dev/kvm: a character device 10:232, mode 0660, root's; or ENOENT
 * where the host has none. */
SHIM_INTERNAL int dev_kvm_stat(struct stat *st)
{
	if (!cfg.dev_kvm) {
		errno = ENOENT;
		return -1;
	}
	memset(st, 0, sizeof(*st));
	st->st_mode = S_IFCHR | 0660;
	st->st_rdev = makedev(10, 232);
	st->st_nlink = 1;
	st->st_blksize = 4096;
	return 0;
}

/* The inode every anon_inode file shares (eventfd's, a VM fd's): its stat. */
static int anon_inode_stat(struct stat *st)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	if (efd < 0)
		return -1;
	int r = real.fstat(efd, st);
	real.close(efd);
	return r;
}

/* fstat of a placeholder: the device's, or a VM's or vcpu's anon inode. */
SHIM_INTERNAL int placeholder_stat(long kind, struct stat *st)
{
	return kind >> KIND_SHIFT == KIND_DEV_KVM ? dev_kvm_stat(st) : anon_inode_stat(st);
}
