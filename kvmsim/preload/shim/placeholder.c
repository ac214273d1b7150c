/* placeholder.c: is this fd one of the server's placeholders, and for which simulated file?
 *
 * The real kernel answers, never a table of ours: a placeholder is a socket whose peer is
 * the server's process (SO_PEERCRED of a socketpair is the process that made it, which no
 * other user can be); its identity is the socket inode's dev/ino, and the server, which
 * alone knows its placeholders, answers any other (the shim's own connection) as foreign.
 * Any other fd costs one fstat. */
#include "shim.h"

#include <errno.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <endian.h>

SHIM_INTERNAL int is_placeholder(int fd, struct identity *id)
{
	int e = errno, yes = 0;
	struct ucred cred;
	socklen_t len = sizeof(cred);
	struct stat st;
	if (fd >= 0 && real.fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) &&
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.pid > 0 &&
	    cred.pid == kvmsim_server_pid()) {
		id->dev = (uint64_t)st.st_dev;
		id->ino = (uint64_t)st.st_ino;
		yes = 1;
	}
	errno = e;
	return yes;
}

/* What the server says fd is: NOT_OURS, IS_DEV_KVM or IS_VM (errno untouched). */
SHIM_INTERNAL int placeholder_kind(int fd)
{
	struct identity id;
	unsigned char req[IDENTIFY_SIZE];
	uint32_t flags;
	int e = errno, new_fd;
	if (!is_placeholder(fd, &id))
		return NOT_OURS;
	uint64_t dev = htobe64(id.dev), ino = htobe64(id.ino);
	memcpy(req, &dev, 8);
	memcpy(req + 8, &ino, 8);
	struct request r = {.type = IDENTIFY, .fixed = req, .fixed_len = sizeof(req)};
	long kind = kvmsim_call(&r, &flags, &new_fd);
	errno = e;
	return kind == IS_DEV_KVM || kind == IS_VM ? (int)kind : NOT_OURS;
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

/* fstat of a placeholder: the device's, or a VM's anon inode. */
SHIM_INTERNAL int placeholder_stat(int kind, struct stat *st)
{
	return kind == IS_VM ? anon_inode_stat(st) : dev_kvm_stat(st);
}
