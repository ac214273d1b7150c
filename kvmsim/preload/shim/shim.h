/*
 * kvmsim_shim.so: an LD_PRELOAD library that makes /dev/kvm in this process a simulated
 * kernel served by `kvmsim serve` on the Unix socket $KVMSIM_SOCKET (kvmsim/intercept/wire.py).
 *
 * A simulated file (an open /dev/kvm, a VM fd) is a real placeholder in this process: one end
 * of a SOCK_SEQPACKET socketpair the server made and passed here (kvmsim/intercept/placeholder.py).
 * The real kernel keeps the fd table: dup, fork, vfork, exec, close_range, fclose and
 * SCM_RIGHTS follow its rules and the shim sees none of them.  A call on an fd asks the real
 * kernel what the fd is (placeholder.c) and names the simulated file by the placeholder's
 * identity (dev, ino); the server releases the file when the last placeholder is gone.
 *
 * The shim's jobs, one file each:
 *   init.c         libc's entry points and the environment, once (pthread_once)
 *   channel.c      the connection: frames on the socket or the shared-memory channel, one
 *                  connection per process (checked on every call), a call and its memory requests
 *   usermem.c      this process's memory for the kernel's copy_from_user/copy_to_user, only
 *                  inside the argument window of the call in progress
 *   placeholder.c  is this fd a placeholder, and which simulated file
 *   namei.c        path lookup as fs/namei.c walks it: /dev/kvm and the host's files
 *   hooks.c        the intercepted libc entry points
 */
#ifndef KVMSIM_SHIM_H
#define KVMSIM_SHIM_H

#define _GNU_SOURCE
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/utsname.h>

#include "kvmsim_wire.h" /* generated from kvmsim/intercept/wire.py and channel.py at build time */

#define SHIM_API __attribute__((visibility("default")))
#define SHIM_INTERNAL __attribute__((visibility("hidden")))

/* ---- init.c: what the shim found at load -------------------------------------------- */

struct real_libc {
	int (*open)(const char *, int, ...);
	int (*open64)(const char *, int, ...);
	int (*openat)(int, const char *, int, ...);
	int (*openat64)(int, const char *, int, ...);
	int (*close)(int);
	int (*ioctl)(int, unsigned long, ...);
	int (*uname)(struct utsname *);
	int (*fcntl)(int, int, ...);
	int (*faccessat)(int, const char *, int, int);
	int (*access)(const char *, int);
	int (*fstatat)(int, const char *, struct stat *, int);
	int (*fstat)(int, struct stat *);
	int (*statx)(int, const char *, int, unsigned, struct statx *);
	FILE *(*fopen)(const char *, const char *);
	DIR *(*opendir)(const char *);
	ssize_t (*read)(int, void *, size_t);
	ssize_t (*write)(int, const void *, size_t);
	ssize_t (*pread)(int, void *, size_t, off_t);
	ssize_t (*pwrite)(int, const void *, size_t, off_t);
	ssize_t (*readv)(int, const struct iovec *, int);
	ssize_t (*writev)(int, const struct iovec *, int);
	off_t (*lseek)(int, off_t, int);
	int (*shutdown)(int, int);
	ssize_t (*readlink)(const char *, char *, size_t);
	ssize_t (*readlinkat)(int, const char *, char *, size_t);
};

/* The environment, read once at load: a program may change its own later. */
struct shim_config {
	const char *socket;    /* $KVMSIM_SOCKET: the server */
	const char *machine;   /* $KVMSIM_MACHINE: uname's machine */
	const char *root;      /* $KVMSIM_ROOT: the host's files (NULL: none) */
	int dev_kvm;           /* $KVMSIM_DEV_KVM: the host has /dev/kvm */
	int want_socket;       /* $KVMSIM_CHANNEL=socket: no shared-memory channel */
	int memory_pipe;       /* $KVMSIM_MEMORY=pipe: memory through a pipe, not process_vm_* */
	long long deadline_ns; /* $KVMSIM_TIMEOUT: how long one call may wait for the server */
};

SHIM_INTERNAL extern struct real_libc real;
SHIM_INTERNAL extern struct shim_config cfg;
SHIM_INTERNAL void shim_ready(void); /* every hook's first step: init has run (once) */
SHIM_INTERNAL int shim_running(void); /* init has finished (never starts it) */
SHIM_INTERNAL void *sys_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off); /* the syscall */

/* ---- channel.c: one call to the server ---------------------------------------------- */

/* The call's request: a message, its fixed part and a tail (a path, the read-ahead window). */
struct request {
	uint16_t type;
	const void *fixed;
	size_t fixed_len;
	const void *tail;
	size_t tail_len;
	uint64_t arg;  /* IOCTL: the argument; memory requests are honoured only in [arg, arg + MAX_USER_COPY) */
	uint64_t inner; /* ... and in [inner, inner + ONE_REG_VALUE): the value its struct points at (INNER_AT; 0: none) */
	int cloexec;   /* a placeholder that comes back is O_CLOEXEC */
};

/* The call's answer: ret, or -1 with errno; *flags the RESULT's; *new_fd the placeholder
 * that came with RESULT_NEW_FD (else -1). */
SHIM_INTERNAL long kvmsim_call(const struct request *req, uint32_t *flags, int *new_fd);
/* The server's pid (connecting first if this process has not), 0 when there is none. */
SHIM_INTERNAL pid_t kvmsim_server_pid(void);
SHIM_INTERNAL pid_t self_pid(void); /* getpid(2), never a cached value */

/* ---- usermem.c: this process's memory, for the server ------------------------------- */

struct usermem {
	uint64_t base;   /* the argument of the ioctl in progress */
	int span;        /* 1 while a call may touch [base, base + MAX_USER_COPY) */
	uint64_t inner;  /* and [inner, inner + ONE_REG_VALUE) while span, when not 0 */
	int pipe[2];     /* the memory pipe, made on first use in this call */
};

SHIM_INTERNAL void usermem_begin(struct usermem *m, uint64_t base, int span);
SHIM_INTERNAL void usermem_end(struct usermem *m);
SHIM_INTERNAL size_t usermem_read_ahead(struct usermem *m, uint64_t addr, void *buf, size_t n);
SHIM_INTERNAL int usermem_read(struct usermem *m, uint64_t addr, void *buf, size_t n);
SHIM_INTERNAL int usermem_write(struct usermem *m, uint64_t addr, const void *buf, size_t n, uint32_t *done);
SHIM_INTERNAL void usermem_find_stack(void);

/* ---- placeholder.c: what an fd is --------------------------------------------------- */

struct identity {
	uint64_t dev, ino;
};

SHIM_INTERNAL int is_placeholder(int fd, struct identity *id); /* errno untouched */
SHIM_INTERNAL long placeholder_kind(int fd); /* NOT_OURS, or file_kind_of()'s argument */
SHIM_INTERNAL int placeholder_stat(long kind, struct stat *st);
SHIM_INTERNAL int dev_kvm_stat(struct stat *st);

/* ---- namei.c: which file a path names ----------------------------------------------- */

enum { PATH_REAL, PATH_DEV_KVM, PATH_VIEW };

struct lookup {
	int kind;
	char *buf; /* PATH_VIEW: the path under $KVMSIM_ROOT (in an mmap'd scratch) */
};

SHIM_INTERNAL void namei_init(void);
SHIM_INTERNAL int lookup(int dirfd, const char *path, int follow, struct lookup *l);
SHIM_INTERNAL void lookup_done(struct lookup *l);
SHIM_INTERNAL const char *real_path(const struct lookup *l, const char *path);

#endif
