/*
 * kvmsim_shim.so: an LD_PRELOAD library that makes /dev/kvm in this process a simulated
 * kernel served by `kvmsim serve` on the Unix socket $KVMSIM_SOCKET.
 *
 * It intercepts open/open64/openat/openat64 (and their _FORTIFY_SOURCE __*_2 forms) of
 * /dev/kvm, ioctl, close and the dup family on the descriptors it emulates, and uname (the machine field
 * becomes $KVMSIM_MACHINE, the simulated kernel's architecture).  Everything else goes to
 * libc.  An emulated descriptor is a real descriptor of the process (/dev/null), so numbering,
 * close and EBADF behave.  Pointer arguments stay in this process: the server asks for reads
 * and writes (the kernel's copy_from_user/copy_to_user) and the shim performs them with
 * process_vm_readv/writev on its own pid, or through a pipe where those are missing
 * (qemu-user): either reports a bad address as EFAULT instead of crashing.
 *
 * $KVMSIM_MEMORY=pipe forces the pipe path (tests use it to cover both).
 *
 * An IOCTL carries a read-ahead window of the argument's memory, and the kernel's writes come
 * back with the RESULT, applied here in order: one round trip a call (see kvmsim/preload/wire.py).
 *
 * After connecting, the shim asks for the shared-memory channel (kvmsim/preload/channel.py): the same
 * frames through a memfd both sides map, a short spin then a futex instead of a socket round
 * trip.  A server that cannot offer it answers ENOSYS and the socket stays the channel, as it
 * does with $KVMSIM_CHANNEL=socket (the runner sets that under qemu-user).
 *
 * The wire format is kvmsim/preload/wire.py: every field big-endian.  A child (fork, a raw
 * fork or clone, vfork) has no emulated descriptors of its parent's (its copies are plain
 * /dev/null) and never touches its parent's state: see owner_pid.  dup/dup2/dup3 and fcntl(F_DUPFD*) of
 * an emulated fd share its kernel file, closed with the last descriptor, as in the kernel.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <linux/futex.h>
#include <poll.h>
#include <time.h>
#include <sys/un.h>
#include <linux/close_range.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "kvmsim_wire.h" /* generated from kvmsim/preload/wire.py and channel.py at build time */

#define MAX_FD 65536
/* The most a handler may touch from an ioctl's argument: KVM_PPC_GET_COMPAT_CAPS reads at
 * most PAGE_SIZE (64K on POWER) from it.  The server's memory requests are honoured only in
 * [arg, arg + ARG_SPAN) of the ioctl in progress, never elsewhere in this process. */
#define ARG_SPAN MAX_USER_COPY
#define HIGH_FD 900 /* where the shim keeps its own descriptors, away from the program's */
#define SHM_SIZE (SHM_CONTROL + 2u * SHM_CAPACITY)
#define SHM_SEALS (F_SEAL_SHRINK | F_SEAL_GROW) /* what the memfd must carry before it is mapped */
#define SHM_SPIN_NS 300000L   /* spin this long for an answer before sleeping */
#define SHM_SLEEP_NS 100000000L /* a sleep's length; then the socket is checked for the server's exit */

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_close)(int);
static int (*real_ioctl)(int, unsigned long, ...);
static int (*real_uname)(struct utsname *);
static int (*real_dup)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);
static int (*real_fcntl)(int, int, ...);
static int (*real_fcntl64)(int, int, ...);
static int (*real_faccessat)(int, const char *, int, int);
static int (*real_fstatat)(int, const char *, struct stat *, int);
static FILE *(*real_fopen)(const char *, const char *);
static DIR *(*real_opendir)(const char *);
static int (*real_statx)(int, const char *, int, unsigned, struct statx *);
static int (*real_fstat)(int, struct stat *);
static int (*real_fclose)(FILE *);
static ssize_t (*real_read)(int, void *, size_t);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pread)(int, void *, size_t, off_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_readv)(int, const struct iovec *, int);
static ssize_t (*real_writev)(int, const struct iovec *, int);

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int sock = -1;
static unsigned char *shm;      /* the shared-memory channel, when the server offered one */
static uint32_t rx_seq;         /* the last s2c message taken */
static size_t rx_off, rx_len;   /* how much of it the frame reader has consumed */
static int lost;              /* the connection broke (or the server was refused): never reconnect */
static int in_ioctl;          /* memory requests are allowed only during an ioctl ... */
static uint64_t arg_base;     /* ... and only in [arg_base, arg_base + ARG_SPAN) */
static int mem_pipe[2] = {-1, -1};
static int use_pipe;
static int32_t kfd_of[MAX_FD]; /* kernel fd + 1; 0 = not emulated */
static int32_t refs[MAX_FD];   /* descriptors of this process per kernel fd (dup shares one file) */
static uint8_t vm_of[MAX_FD];  /* 1: the descriptor is a VM's (an anon inode), 0: /dev/kvm's */

/* The shim's lock.  Signals are blocked only while it is taken or given back with this
 * thread's mark (so a handler never finds the two apart), never across the wait for the
 * server: a stalled server leaves the program killable by SIGTERM and Ctrl-C.  A handler that
 * interrupted this thread's own simulated call cannot make another on the same connection:
 * its call fails with EINTR (a close still closes, and its kernel file is released when the
 * interrupted call ends). */
static __thread int in_shim; /* this thread holds the lock */
static int deferred[16];     /* kernel fds a nested close released, for leave() to close */
static int ndeferred;

static int enter(void)
{
	sigset_t all, saved;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &saved);
	if (in_shim) {
		pthread_sigmask(SIG_SETMASK, &saved, NULL);
		errno = EINTR;
		return -1;
	}
	pthread_mutex_lock(&lock);
	in_shim = 1;
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	return 0;
}

static void release_kfd(int kfd);

static void leave(void)
{
	sigset_t all, saved;
	int e = errno;
	while (ndeferred > 0) /* what a handler closed while this thread waited */
		release_kfd(deferred[--ndeferred]);
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &saved);
	in_shim = 0;
	pthread_mutex_unlock(&lock);
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	errno = e;
}

/* The shim's own descriptors (its socket, the memory pipe): a program's close loops,
 * close_range() and closefrom() must not take them away, nor dup2() onto them. */
static int owner(void);

static int internal(int fd)
{
	return fd >= 0 && (fd == sock || fd == mem_pipe[0] || fd == mem_pipe[1]) && owner();
}

/* Move an internal descriptor out of the program's way, to a high number. */
static int relocate(int fd)
{
	int high = real_fcntl(fd, F_DUPFD_CLOEXEC, HIGH_FD);
	if (high < 0)
		high = real_fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (high < 0)
		return fd;
	real_close(fd);
	return high;
}

/* The process the shim's state (connection, memory pipe, tables) belongs to, compared with
 * the kernel's getpid(2) on every call that would use it: a child made by syscall(SYS_fork),
 * clone(SIGCHLD) or vfork() runs no pthread_atfork handler, and a cached pid let it speak on
 * its parent's connection (their answers crossed) or, from a vfork child's close_range(),
 * close its parent's simulated files.  To any other process the state is not there: its
 * descriptors are plain ones, and it touches nothing (a vfork child shares the parent's
 * memory).  Only its own open of /dev/kvm makes it the owner, with state of its own. */
static pid_t owner_pid, ready_pid;

static pid_t self_pid(void)
{
	return (pid_t)syscall(SYS_getpid);
}

/* The top of this thread's stack, found once a thread (outside the shim's lock: for the main
 * thread glibc reads /proc/self/maps).  0 where it cannot be known. */
static __thread uintptr_t stack_low, stack_top;
static __thread int stack_looked;

static void find_stack(void)
{
	pthread_attr_t attr;
	void *low;
	size_t size;
	if (stack_looked)
		return;
	stack_looked = 1;
	if (pthread_getattr_np(pthread_self(), &attr) != 0)
		return;
	if (pthread_attr_getstack(&attr, &low, &size) == 0) {
		stack_low = (uintptr_t)low;
		stack_top = (uintptr_t)low + size;
	}
	pthread_attr_destroy(&attr);
}

/* How many bytes from addr are in the live part of this thread's stack (from this frame up to
 * its top): mapped and writable, so touching them needs no system call and cannot fault.  The
 * argument of an ioctl is usually there (QEMU's struct, CPython's ioctl buffer).  Only while
 * this frame is on that stack: on a signal stack or a coroutine's, [here, top) may span holes. */
static size_t live_stack_room(uint64_t addr)
{
	uintptr_t here = (uintptr_t)__builtin_frame_address(0);
	if (!stack_top || here < stack_low || here >= stack_top)
		return 0;
	return addr >= here && addr < stack_top ? (size_t)(stack_top - addr) : 0;
}

/* This process's end of the connection goes: the socket and the shared mapping. */
static void drop_connection(void)
{
	if (sock >= 0)
		real_close(sock);
	sock = -1;
	if (shm)
		munmap(shm, SHM_SIZE);
	shm = NULL;
}

/* This process is a child: what it inherited (its parent's connection, shared mapping,
 * memory pipe and tables) is the parent's; it starts with no emulated descriptors, as the
 * child of fork() always has (its copies of them are plain /dev/null). */
static void forget_parent(void)
{
	drop_connection();
	for (int i = 0; i < 2; i++) { /* a shared pipe would interleave the two processes' reads */
		if (mem_pipe[i] >= 0)
			real_close(mem_pipe[i]);
		mem_pipe[i] = -1;
	}
	memset(kfd_of, 0, sizeof(kfd_of));
	memset(refs, 0, sizeof(refs));
	ndeferred = 0;
	in_shim = 0;
	pthread_mutex_init(&lock, NULL); /* another thread of the parent may have held it */
}

static void child_after_fork(void)
{
	forget_parent();
	owner_pid = ready_pid = self_pid();
}

static int owner(void)
{
	return self_pid() == __atomic_load_n(&ready_pid, __ATOMIC_ACQUIRE);
}

/* A child forked behind the shim's back opens /dev/kvm: the state becomes its own (never in
 * a vfork child, which may only exec or exit).  Its first thread to get here resets; any
 * other waits until that is done. */
static void adopt_if_forked(void)
{
	pid_t pid = self_pid(), owner = __atomic_load_n(&owner_pid, __ATOMIC_ACQUIRE);
	if (owner == pid)
		return;
	if (__atomic_compare_exchange_n(&owner_pid, &owner, pid, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
		forget_parent();
		__atomic_store_n(&ready_pid, pid, __ATOMIC_RELEASE);
		return;
	}
	while (__atomic_load_n(&ready_pid, __ATOMIC_ACQUIRE) != pid)
		sched_yield();
}

static void take_dir_ids(void);
static int want_socket;         /* $KVMSIM_CHANNEL=socket */
static int host_dev_kvm = 1;    /* $KVMSIM_DEV_KVM */
static const char *host_root;   /* $KVMSIM_ROOT */
static const char *server_path; /* $KVMSIM_SOCKET */
static const char *machine;     /* $KVMSIM_MACHINE */
/* How long one call may wait for the server ($KVMSIM_TIMEOUT seconds, README "Security"):
 * then it fails with EIO and the connection is given up. */
static long long deadline_ns = 30LL * 1000000000LL;

__attribute__((constructor)) static void shim_init(void)
{
	static int done;
	if (done)
		return;
	done = 1;
	real_open = dlsym(RTLD_NEXT, "open");
	real_open64 = dlsym(RTLD_NEXT, "open64");
	real_openat = dlsym(RTLD_NEXT, "openat");
	real_openat64 = dlsym(RTLD_NEXT, "openat64");
	real_close = dlsym(RTLD_NEXT, "close");
	real_ioctl = dlsym(RTLD_NEXT, "ioctl");
	real_uname = dlsym(RTLD_NEXT, "uname");
	real_dup = dlsym(RTLD_NEXT, "dup");
	real_dup2 = dlsym(RTLD_NEXT, "dup2");
	real_dup3 = dlsym(RTLD_NEXT, "dup3");
	real_fcntl = dlsym(RTLD_NEXT, "fcntl");
	real_fcntl64 = dlsym(RTLD_NEXT, "fcntl64");
	if (!real_fcntl64)
		real_fcntl64 = real_fcntl;
	real_faccessat = dlsym(RTLD_NEXT, "faccessat");
	real_fstatat = dlsym(RTLD_NEXT, "fstatat");
	real_fopen = dlsym(RTLD_NEXT, "fopen");
	real_opendir = dlsym(RTLD_NEXT, "opendir");
	real_statx = dlsym(RTLD_NEXT, "statx");
	real_fstat = dlsym(RTLD_NEXT, "fstat");
	real_fclose = dlsym(RTLD_NEXT, "fclose");
	real_read = dlsym(RTLD_NEXT, "read");
	real_write = dlsym(RTLD_NEXT, "write");
	real_pread = dlsym(RTLD_NEXT, "pread");
	real_pwrite = dlsym(RTLD_NEXT, "pwrite");
	real_readv = dlsym(RTLD_NEXT, "readv");
	real_writev = dlsym(RTLD_NEXT, "writev");
	/* the environment is read once, here: a program may change its own later */
	const char *memory = getenv("KVMSIM_MEMORY");
	use_pipe = memory && strcmp(memory, "pipe") == 0;
	const char *channel = getenv("KVMSIM_CHANNEL");
	want_socket = channel && !strcmp(channel, "socket");
	const char *dev_kvm = getenv("KVMSIM_DEV_KVM");
	host_dev_kvm = !dev_kvm || strcmp(dev_kvm, "0") != 0;
	const char *root = getenv("KVMSIM_ROOT");
	host_root = root && *root ? root : NULL;
	const char *timeout = getenv("KVMSIM_TIMEOUT");
	if (timeout && *timeout) {
		char *end;
		double seconds = strtod(timeout, &end);
		if (!*end && seconds > 0 && seconds < 1e6)
			deadline_ns = (long long)(seconds * 1e9);
	}
	server_path = getenv("KVMSIM_SOCKET");
	machine = getenv("KVMSIM_MACHINE");
	take_dir_ids();
	owner_pid = ready_pid = self_pid();
	pthread_atfork(NULL, NULL, child_after_fork);
}

static void shim_init(void);

/* Another library's constructor may call us before ours ran (libselinux calls fopen). */
static inline void ensure(void)
{
	if (!real_close)
		shim_init();
}

static int emulated(int fd)
{
	return fd >= 0 && fd < MAX_FD && kfd_of[fd] != 0 && owner();
}

/* ---- framing --------------------------------------------------------------------- */

static int send_all(const void *buf, size_t n)
{
	const char *p = buf;
	while (n) {
		ssize_t r = send(sock, p, n, MSG_NOSIGNAL);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static volatile uint32_t *shm_word(int i)
{
	return (volatile uint32_t *)(void *)(shm + 4 * i);
}

static long futex(volatile uint32_t *word, int op, uint32_t val, const struct timespec *timeout)
{
	return syscall(SYS_futex, word, op, val, timeout, NULL, 0);
}

/* Has the server gone?  It sends nothing on the socket once the channel is shared. */
static int server_gone(void)
{
	struct pollfd p = {.fd = sock, .events = POLLIN};
	char c;
	return poll(&p, 1, 0) != 0 && recv(sock, &c, 1, MSG_PEEK | MSG_DONTWAIT) <= 0;
}

static long elapsed_ns(const struct timespec *since)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - since->tv_sec) * 1000000000L + (now.tv_nsec - since->tv_nsec);
}

static struct timespec call_began; /* when the call in progress was sent (under the lock) */

/* Nanoseconds left before the call in progress fails (<= 0: it has failed). */
static long long time_left(void)
{
	return deadline_ns - elapsed_ns(&call_began);
}

/* The next s2c message: spin a while (the server is working on it), then sleep on the futex. */
static int shm_next(void)
{
	volatile uint32_t *seq = shm_word(S2C_SEQ);
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (unsigned i = 1; __atomic_load_n(seq, __ATOMIC_ACQUIRE) == rx_seq; i++) {
		if (i % 64 == 0 && elapsed_ns(&start) > SHM_SPIN_NS) {
			const struct timespec sleep = {0, SHM_SLEEP_NS};
			__atomic_store_n(shm_word(S2C_WAIT), 1, __ATOMIC_SEQ_CST); /* then read seq: Dekker */
			while (__atomic_load_n(seq, __ATOMIC_SEQ_CST) == rx_seq) {
				if (futex(seq, FUTEX_WAIT, rx_seq, &sleep) < 0 && errno == ETIMEDOUT &&
				    (server_gone() || time_left() <= 0)) {
					__atomic_store_n(shm_word(S2C_WAIT), 0, __ATOMIC_RELAXED);
					return -1;
				}
			}
			__atomic_store_n(shm_word(S2C_WAIT), 0, __ATOMIC_RELAXED);
			break;
		}
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#endif
	}
	rx_seq = __atomic_load_n(seq, __ATOMIC_ACQUIRE);
	rx_len = __atomic_load_n(shm_word(S2C_LEN), __ATOMIC_RELAXED);
	rx_off = 0;
	return rx_len >= HEADER_SIZE && rx_len <= SHM_CAPACITY ? 0 : -1;
}

/* Bytes of the current frame; a frame never spans two messages. */
static int shm_recv(void *buf, size_t n)
{
	if (rx_off == rx_len && shm_next())
		return -1;
	if (n > rx_len - rx_off)
		return -1;
	memcpy(buf, shm + SHM_CONTROL + SHM_CAPACITY + rx_off, n);
	rx_off += n;
	return 0;
}

/* One frame as one c2s message: write it, its length, bump the sequence, wake a sleeper. */
static int shm_send(const unsigned char *hdr, const void *a, size_t an, const void *b, size_t bn)
{
	unsigned char *area = shm + SHM_CONTROL;
	if (HEADER_SIZE + an + bn > SHM_CAPACITY)
		return -1;
	memcpy(area, hdr, HEADER_SIZE);
	if (an)
		memcpy(area + HEADER_SIZE, a, an);
	if (bn)
		memcpy(area + HEADER_SIZE + an, b, bn);
	__atomic_store_n(shm_word(C2S_LEN), (uint32_t)(HEADER_SIZE + an + bn), __ATOMIC_RELAXED);
	__atomic_fetch_add(shm_word(C2S_SEQ), 1, __ATOMIC_SEQ_CST); /* publishes the frame; a full fence */
	if (__atomic_load_n(shm_word(C2S_WAIT), __ATOMIC_SEQ_CST))
		futex(shm_word(C2S_SEQ), FUTEX_WAKE, 1, NULL);
	rx_off = rx_len = 0; /* the answer to this is a new message */
	return 0;
}

/* Wait until the socket has something to read (or the peer has gone), within the call's
 * deadline; a handler that runs meanwhile does not end the wait.  -1 past the deadline. */
static int wait_readable(void)
{
	for (;;) {
		struct pollfd pfd = {.fd = sock, .events = POLLIN};
		long long left = time_left();
		if (left <= 0)
			return -1;
		int ready = poll(&pfd, 1, (int)(left / 1000000 + 1));
		if (ready > 0)
			return 0;
		if (ready < 0 && errno != EINTR)
			return -1;
	}
}

static int recv_all(void *buf, size_t n)
{
	if (shm)
		return shm_recv(buf, n);
	char *p = buf;
	while (n) {
		if (wait_readable())
			return -1;
		ssize_t r = recv(sock, p, n, MSG_DONTWAIT);
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			continue;
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static int send_frame(uint16_t type, const void *a, size_t an, const void *b, size_t bn)
{
	unsigned char hdr[HEADER_SIZE];
	uint32_t magic = htobe32(KVMSIM_MAGIC), len = htobe32((uint32_t)(an + bn));
	uint16_t ver = htobe16(KVMSIM_VERSION), typ = htobe16(type);
	memcpy(hdr, &magic, 4);
	memcpy(hdr + 4, &ver, 2);
	memcpy(hdr + 6, &typ, 2);
	memcpy(hdr + 8, &len, 4);
	if (shm)
		return shm_send(hdr, a, an, b, bn);
	if (send_all(hdr, sizeof(hdr)) || (an && send_all(a, an)) || (bn && send_all(b, bn)))
		return -1;
	return 0;
}

/* A frame's header; the payload is left to the caller.  -1 on a broken connection. */
static int parse_header(const unsigned char *hdr, uint16_t *type, uint32_t *len)
{
	uint32_t magic, l;
	uint16_t ver, typ;
	memcpy(&magic, hdr, 4);
	memcpy(&ver, hdr + 4, 2);
	memcpy(&typ, hdr + 6, 2);
	memcpy(&l, hdr + 8, 4);
	if (be32toh(magic) != KVMSIM_MAGIC || be16toh(ver) != KVMSIM_VERSION || be32toh(l) > MAX_PAYLOAD)
		return -1;
	*type = be16toh(typ);
	*len = be32toh(l);
	return 0;
}

static int recv_header(uint16_t *type, uint32_t *len)
{
	unsigned char hdr[HEADER_SIZE];
	return recv_all(hdr, sizeof(hdr)) ? -1 : parse_header(hdr, type, len);
}

/* Ask for the shared-memory channel.  0 with shm set, or 0 on the socket when the server
 * cannot offer it (or $KVMSIM_CHANNEL=socket); -1 when the connection broke. */
static int open_channel(void)
{
	unsigned char hdr[HEADER_SIZE];
	char control[CMSG_SPACE(4 * sizeof(int))];
	struct iovec iov = {.iov_base = hdr, .iov_len = sizeof(hdr)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control)};
	uint16_t type;
	uint32_t len, cap;
	ssize_t r;
	int fd = -1;
	if (want_socket)
		return 0;
	if (send_frame(SHM, NULL, 0, NULL, 0))
		return -1;
	if (wait_readable()) /* the answer, within the deadline */
		return -1;
	do
		r = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	while (r < 0 && errno == EINTR);
	for (struct cmsghdr *c = r > 0 ? CMSG_FIRSTHDR(&mh) : NULL; c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
			int got;
			memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (fd < 0)
				fd = got;
			else
				real_close(got); /* one memfd, nothing else */
		}
	}
	if (r <= 0 || ((size_t)r < sizeof(hdr) && recv_all(hdr + r, sizeof(hdr) - (size_t)r)) ||
	    parse_header(hdr, &type, &len))
		goto broken;
	if (type == SHM_READY && len == 4 && fd >= 0) {
		struct stat st;
		if (recv_all(&cap, 4) || be32toh(cap) != SHM_CAPACITY || fstat(fd, &st) || st.st_size != (off_t)SHM_SIZE)
			goto broken;
		/* a memfd the server could still shrink would SIGBUS this program under its mapping */
		int seals = real_fcntl(fd, F_GET_SEALS);
		if (seals < 0 || (seals & SHM_SEALS) != SHM_SEALS) {
			static const char msg[] = "kvmsim shim: refusing the server's shared memory: it is not sealed\n";
			(void)!write(2, msg, sizeof(msg) - 1);
			goto broken;
		}
		void *map = mmap(NULL, SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		real_close(fd);
		if (map == MAP_FAILED)
			return -1;
		shm = map;
		rx_seq = __atomic_load_n(shm_word(S2C_SEQ), __ATOMIC_ACQUIRE);
		rx_off = rx_len = 0;
		return 0;
	}
	if (type == RESULT && len == RESULT_SIZE) { /* ENOSYS: this server keeps the socket */
		unsigned char payload[RESULT_SIZE];
		if (fd >= 0)
			real_close(fd);
		return recv_all(payload, sizeof(payload));
	}
broken:
	if (fd >= 0)
		real_close(fd);
	return -1;
}

/* May the server at the other end of sock touch this process?  Only our own uid or root. */
static int trusted_server(const char *path)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return 0;
	if (cred.uid == getuid() || cred.uid == 0)
		return 1;
	char msg[512];
	int n = snprintf(msg, sizeof(msg),
	                 "kvmsim shim: refusing the server at %s: it runs as uid %u, not as uid %u or root\n", path,
	                 (unsigned)cred.uid, (unsigned)getuid());
	if (n > 0)
		(void)!write(2, msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
	return 0;
}

static void disconnect(void);

static int connect_server(void)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	const char *path = server_path;
	if (sock >= 0)
		return 0;
	clock_gettime(CLOCK_MONOTONIC, &call_began); /* the handshake has the same deadline as a call */
	if (lost) { /* whatever listens at the path now is not the server this process trusted */
		errno = EIO;
		return -1;
	}
	if (!path || strlen(path) >= sizeof(addr.sun_path)) {
		errno = ENOENT;
		return -1;
	}
	strcpy(addr.sun_path, path);
	sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return -1;
	if (connect(sock, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		int e = errno;
		real_close(sock);
		sock = -1;
		errno = e;
		return -1;
	}
	if (!trusted_server(path)) {
		real_close(sock);
		sock = -1;
		lost = 1;
		errno = EACCES;
		return -1;
	}
	sock = relocate(sock);
	if (open_channel()) {
		disconnect();
		errno = EIO;
		return -1;
	}
	return 0;
}

static void disconnect(void)
{
	drop_connection();
	lost = 1;
}

/* Is [addr, addr + n) inside the argument span of the ioctl in progress?  (No overflow:
 * an address near 2^64 is simply outside.) */
static int in_span(uint64_t addr, uint64_t n)
{
	if (!in_ioctl || addr < arg_base)
		return 0;
	uint64_t off = addr - arg_base;
	return off <= ARG_SPAN && n <= ARG_SPAN - off;
}

/* ---- the caller's memory, for the kernel's copy_from_user / copy_to_user ------------ */

static int pipe_ready(void)
{
	if (mem_pipe[0] >= 0)
		return 1;
	if (pipe2(mem_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
		return 0;
	mem_pipe[0] = relocate(mem_pipe[0]);
	mem_pipe[1] = relocate(mem_pipe[1]);
	return 1;
}

static void pipe_drain(void)
{
	char junk[256];
	while (read(mem_pipe[0], junk, sizeof(junk)) > 0)
		;
}

static int mem_read(uint64_t addr, void *buf, size_t n)
{
	if (live_stack_room(addr) >= n) {
		memcpy(buf, (const void *)(uintptr_t)addr, n);
		return 0;
	}
	if (!use_pipe) {
		struct iovec local = {buf, n}, remote = {(void *)(uintptr_t)addr, n};
		ssize_t r = process_vm_readv(self_pid(), &local, 1, &remote, 1, 0);
		if (r == (ssize_t)n)
			return 0;
		if (r >= 0 || errno == EFAULT)
			return EFAULT;
		use_pipe = 1; /* ENOSYS (qemu-user), EPERM (no ptrace permission): use a pipe */
	}
	if (!pipe_ready())
		return EIO;
	ssize_t w = write(mem_pipe[1], (const void *)(uintptr_t)addr, n);
	if (w != (ssize_t)n) {
		pipe_drain();
		return EFAULT;
	}
	if (read(mem_pipe[0], buf, n) != (ssize_t)n) {
		pipe_drain();
		return EIO;
	}
	return 0;
}

/* How many bytes from addr are readable, up to n, copied into buf (0 when none are). */
static size_t mem_read_prefix(uint64_t addr, void *buf, size_t n)
{
	if (addr < 4096) /* not a pointer, or NULL: nothing to read ahead */
		return 0;
	size_t room = live_stack_room(addr);
	if (room) {
		n = room < n ? room : n;
		memcpy(buf, (const void *)(uintptr_t)addr, n);
		return n;
	}
	if (!use_pipe) {
		struct iovec local = {buf, n}, remote = {(void *)(uintptr_t)addr, n};
		ssize_t r = process_vm_readv(self_pid(), &local, 1, &remote, 1, 0);
		if (r >= 0)
			return (size_t)r; /* stops at the first unreadable page */
		if (errno == EFAULT)
			return 0;
		use_pipe = 1;
	}
	if (!pipe_ready())
		return 0;
	ssize_t w = write(mem_pipe[1], (const void *)(uintptr_t)addr, n); /* stops at a fault too */
	if (w <= 0) {
		pipe_drain();
		return 0;
	}
	ssize_t r = read(mem_pipe[0], buf, (size_t)w);
	pipe_drain();
	return r > 0 ? (size_t)r : 0;
}

static int mem_write(uint64_t addr, const void *buf, size_t n, uint32_t *done)
{
	*done = 0;
	if (live_stack_room(addr) >= n) {
		memcpy((void *)(uintptr_t)addr, buf, n);
		*done = (uint32_t)n;
		return 0;
	}
	if (!use_pipe) {
		struct iovec local = {(void *)buf, n}, remote = {(void *)(uintptr_t)addr, n};
		ssize_t r = process_vm_writev(self_pid(), &local, 1, &remote, 1, 0);
		if (r == (ssize_t)n) {
			*done = (uint32_t)n;
			return 0;
		}
		if (r >= 0 || errno == EFAULT) {
			*done = r > 0 ? (uint32_t)r : 0;
			return EFAULT;
		}
		use_pipe = 1;
	}
	if (!pipe_ready())
		return EIO;
	if (write(mem_pipe[1], buf, n) != (ssize_t)n) {
		pipe_drain();
		return EIO;
	}
	ssize_t r = read(mem_pipe[0], (void *)(uintptr_t)addr, n);
	pipe_drain();
	if (r != (ssize_t)n) {
		*done = r > 0 ? (uint32_t)r : 0;
		return EFAULT;
	}
	*done = (uint32_t)n;
	return 0;
}

/* ---- one call: send the request, serve memory requests, return the result ----------- */

static long call(uint16_t type, const void *req, size_t reqn, const void *tail, size_t tailn, uint32_t *flags)
{
	clock_gettime(CLOCK_MONOTONIC, &call_began);
	if (send_frame(type, req, reqn, tail, tailn))
		goto broken;
	for (;;) {
		uint16_t t;
		uint32_t len;
		if (recv_header(&t, &len))
			goto broken;
		if (t == RESULT && len >= RESULT_SIZE) {
			unsigned char *p = malloc(len);
			uint64_t ret;
			uint32_t err, fl, count;
			if (!p || recv_all(p, len)) {
				free(p);
				goto broken;
			}
			memcpy(&ret, p, 8);
			memcpy(&err, p + 8, 4);
			memcpy(&fl, p + 12, 4);
			memcpy(&count, p + 16, 4);
			*flags = be32toh(fl);
			/* the kernel's copy_to_user writes, in order; a fault ends the call with EFAULT */
			int fault = 0;
			size_t off = RESULT_SIZE;
			for (uint32_t i = be32toh(count); i > 0 && !fault; i--) {
				uint64_t addr;
				uint32_t n, done;
				if (off + WRITE_SIZE > len)
					break;
				memcpy(&addr, p + off, 8);
				memcpy(&n, p + off + 8, 4);
				n = be32toh(n);
				off += WRITE_SIZE;
				if (off + n > len)
					break;
				fault = !in_span(be64toh(addr), n) || mem_write(be64toh(addr), p + off, n, &done) != 0;
				off += n;
			}
			free(p);
			if (fault) {
				errno = EFAULT;
				return -1;
			}
			if (be32toh(err)) {
				errno = (int)be32toh(err);
				return -1;
			}
			return (long)(int64_t)be64toh(ret);
		}
		if (t == MEM_READ && len == MEM_READ_SIZE) {
			unsigned char p[MEM_READ_SIZE];
			uint64_t addr;
			uint32_t n, err;
			if (recv_all(p, MEM_READ_SIZE))
				goto broken;
			memcpy(&addr, p, 8);
			memcpy(&n, p + 8, 4);
			addr = be64toh(addr);
			n = be32toh(n);
			if (n > MAX_PAYLOAD - 4)
				goto broken;
			void *buf = malloc(n ? n : 1);
			if (!buf)
				goto broken;
			err = in_span(addr, n) ? (uint32_t)mem_read(addr, buf, n) : EFAULT;
			uint32_t be_err = htobe32(err);
			int bad = send_frame(MEM_DATA, &be_err, MEM_DATA_SIZE, buf, err ? 0 : n);
			free(buf);
			if (bad)
				goto broken;
			continue;
		}
		if (t == MEM_WRITE && len >= MEM_WRITE_SIZE) {
			uint64_t addr;
			uint32_t n = len - MEM_WRITE_SIZE, done, err;
			if (recv_all(&addr, MEM_WRITE_SIZE))
				goto broken;
			void *buf = malloc(n ? n : 1);
			if (!buf || recv_all(buf, n)) {
				free(buf);
				goto broken;
			}
			done = 0;
			err = in_span(be64toh(addr), n) ? (uint32_t)mem_write(be64toh(addr), buf, n, &done) : EFAULT;
			free(buf);
			uint32_t ack[2] = {htobe32(err), htobe32(done)};
			if (send_frame(MEM_ACK, ack, MEM_ACK_SIZE, NULL, 0))
				goto broken;
			continue;
		}
		goto broken;
	}
broken:
	disconnect();
	errno = EIO;
	return -1;
}

/* A descriptor of this process for kernel fd kfd.  When none can be made (EMFILE), the
 * kernel's file is closed again rather than left open in the server. */
static int placeholder(int kfd, int cloexec, int vm)
{
	int fd = real_open("/dev/null", O_RDWR | (cloexec ? O_CLOEXEC : 0));
	if (fd < 0 || fd >= MAX_FD) {
		int e = fd < 0 ? errno : EMFILE;
		uint32_t fl;
		int32_t be_kfd = htobe32((uint32_t)kfd);
		if (fd >= 0)
			real_close(fd);
		if (sock >= 0 && (kfd < 0 || kfd >= MAX_FD || refs[kfd] == 0))
			call(CLOSE, &be_kfd, 4, NULL, 0, &fl);
		errno = e;
		return -1;
	}
	kfd_of[fd] = kfd + 1;
	vm_of[fd] = (uint8_t)vm;
	if (kfd >= 0 && kfd < MAX_FD)
		refs[kfd]++;
	return fd;
}

static int emu_open(const char *path, int flags)
{
	uint32_t fl;
	int fd = -1;
	adopt_if_forked();
	if (enter())
		return -1;
	if (connect_server() == 0) {
		uint32_t be_flags = htobe32((uint32_t)flags);
		long kfd = call(OPEN, &be_flags, 4, path, strlen(path), &fl);
		if (kfd >= 0)
			fd = placeholder((int)kfd, flags & O_CLOEXEC, 0);
	}
	leave();
	return fd;
}

static int emu_ioctl(int fd, unsigned long request, void *arg)
{
	unsigned char req[IOCTL_SIZE], window[WINDOW];
	uint32_t fl = 0;
	int32_t kfd = htobe32((uint32_t)(kfd_of[fd] - 1));
	uint32_t cmd = htobe32((uint32_t)request);
	uint64_t a = htobe64((uint64_t)(uintptr_t)arg);
	int ret;
	memcpy(req, &kfd, 4);
	memcpy(req + 4, &cmd, 4);
	memcpy(req + 8, &a, 8);
	find_stack(); /* before the lock: it may read /proc/self/maps */
	if (enter())
		return -1;
	size_t n = sock >= 0 ? mem_read_prefix((uint64_t)(uintptr_t)arg, window, sizeof(window)) : 0;
	in_ioctl = 1;
	arg_base = (uint64_t)(uintptr_t)arg;
	long r = sock >= 0 ? call(IOCTL, req, IOCTL_SIZE, window, n, &fl) : (errno = EIO, -1);
	in_ioctl = 0;
	ret = (int)r;
	if (r >= 0 && (fl & RESULT_NEW_FD))
		ret = placeholder((int)r, 1, 1);
	leave();
	return ret;
}

/* One descriptor of kernel fd kfd is gone; the kernel's file closes with the last one. */
static void release_kfd(int kfd)
{
	uint32_t fl;
	int32_t be_kfd = htobe32((uint32_t)kfd);
	if (kfd >= 0 && kfd < MAX_FD && --refs[kfd] == 0 && sock >= 0)
		call(CLOSE, &be_kfd, 4, NULL, 0, &fl);
}

/* Forget that fd stands for its kernel fd. */
static void emu_release(int fd)
{
	int kfd = kfd_of[fd] - 1;
	if (enter()) { /* a handler, while this thread waits on the server: leave() closes it */
		kfd_of[fd] = 0;
		if (ndeferred < (int)(sizeof(deferred) / sizeof(deferred[0])))
			deferred[ndeferred++] = kfd;
		return;
	}
	kfd_of[fd] = 0;
	release_kfd(kfd);
	leave();
}

static int emu_close(int fd)
{
	emu_release(fd);
	return real_close(fd);
}

/* newfd (from dup*) now shares oldfd's file, as in the kernel */
static int emu_dup(int oldfd, int newfd)
{
	if (newfd < 0 || newfd >= MAX_FD || newfd == oldfd)
		return newfd;
	if (enter()) { /* a handler, while this thread waits on the server */
		real_close(newfd);
		errno = EINTR;
		return -1;
	}
	int kfd = emulated(oldfd) ? kfd_of[oldfd] - 1 : -1;
	if (kfd >= 0) {
		kfd_of[newfd] = kfd + 1;
		vm_of[newfd] = vm_of[oldfd];
		if (kfd < MAX_FD)
			refs[kfd]++;
	}
	leave();
	return newfd;
}

/* ---- the intercepted entry points -------------------------------------------------- */

static int host_has_dev_kvm(void);
static int emulated_stat(int fd, struct stat *st);

/* open(2) of /dev/kvm: the flags keep their meaning for a character device. */
static int kvm_open(int flags)
{
	if (!host_has_dev_kvm()) {
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
	if ((flags & O_PATH) == O_PATH) /* a path-only fd: no file operations, so not emulated */
		return real_open("/dev/null", O_PATH | (flags & O_CLOEXEC));
	return emu_open("/dev/kvm", flags);
}

static mode_t mode_arg(int flags, va_list ap)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

int __open_2(const char *path, int flags) { return open(path, flags); }
int __open64_2(const char *path, int flags) { return open64(path, flags); }
int __openat_2(int dirfd, const char *path, int flags) { return openat(dirfd, path, flags); }
int __openat64_2(int dirfd, const char *path, int flags) { return openat64(dirfd, path, flags); }

int close(int fd)
{
	ensure();
	if (internal(fd))
		return 0; /* the shim's own: pretend, keep it */
	return emulated(fd) ? emu_close(fd) : real_close(fd);
}

/* close_range(first, last, flags) and closefrom(first): the same over a range, as the
 * sub-ranges between the shim's own descriptors; emulated ones are released. */
static int span(unsigned lo, unsigned hi, int flags)
{
	if (!(flags & CLOSE_RANGE_CLOEXEC))
		for (unsigned fd = lo; fd <= hi && fd < MAX_FD; fd++)
			if (emulated((int)fd))
				emu_release((int)fd);
	return syscall(SYS_close_range, lo, hi, flags) < 0 ? -1 : 0;
}

static int close_span(unsigned first, unsigned last, int flags)
{
	if (!owner()) /* a child's copies are all plain descriptors (a vfork child's above all) */
		return syscall(SYS_close_range, first, last, flags) < 0 ? -1 : 0;
	int mine[3] = {sock, mem_pipe[0], mem_pipe[1]}, r = 0;
	for (int i = 0; i < 3; i++) /* sort the three */
		for (int j = i + 1; j < 3; j++)
			if (mine[j] < mine[i]) {
				int t = mine[i];
				mine[i] = mine[j];
				mine[j] = t;
			}
	unsigned lo = first;
	for (int i = 0; i < 3; i++) {
		if (mine[i] < 0 || (unsigned)mine[i] < lo || (unsigned)mine[i] > last)
			continue;
		if ((unsigned)mine[i] > lo)
			r |= span(lo, (unsigned)mine[i] - 1, flags);
		if ((unsigned)mine[i] == last)
			return r;
		lo = (unsigned)mine[i] + 1;
	}
	return r | span(lo, last, flags);
}

int close_range(unsigned first, unsigned last, int flags)
{
	ensure();
	if (first > last) {
		errno = EINVAL;
		return -1;
	}
	return close_span(first, last, flags);
}

void closefrom(int lowfd)
{
	ensure();
	if (lowfd >= 0)
		close_span((unsigned)lowfd, ~0u, 0);
}

/* The program is about to dup2() onto fd: if the shim uses it, move the shim's elsewhere. */
static void protect(int fd)
{
	if (!internal(fd) || enter())
		return;
	if (fd == sock)
		sock = relocate(sock);
	else if (fd == mem_pipe[0])
		mem_pipe[0] = relocate(mem_pipe[0]);
	else if (fd == mem_pipe[1])
		mem_pipe[1] = relocate(mem_pipe[1]);
	leave();
}

int dup(int oldfd)
{
	ensure();
	int fd = real_dup(oldfd);
	return fd >= 0 && emulated(oldfd) ? emu_dup(oldfd, fd) : fd;
}

/* dup2/dup3 succeeded: newfd now refers to oldfd's file.  newfd's old simulated file (if it
 * was one) lost that reference; oldfd's (if it is one) gained it.  A dup2/dup3 that fails
 * (EBADF, dup3's EINVAL) leaves newfd as it was, as the kernel does. */
static int emu_replaced(int oldfd, int newfd, int was_emulated)
{
	if (was_emulated)
		emu_release(newfd);
	return emulated(oldfd) ? emu_dup(oldfd, newfd) : newfd;
}

int dup2(int oldfd, int newfd)
{
	ensure();
	protect(newfd);
	int was = oldfd != newfd && emulated(newfd);
	int fd = real_dup2(oldfd, newfd);
	return fd < 0 || fd == oldfd ? fd : emu_replaced(oldfd, fd, was);
}

int dup3(int oldfd, int newfd, int flags)
{
	ensure();
	protect(newfd);
	int was = oldfd != newfd && emulated(newfd);
	int fd = real_dup3(oldfd, newfd, flags);
	return fd < 0 ? fd : emu_replaced(oldfd, fd, was);
}

/* fcntl(F_DUPFD[_CLOEXEC]) is how CPython's os.dup() duplicates */
static int fcntl_common(int (*real)(int, int, ...), int fd, int cmd, void *arg)
{
	int r = real(fd, cmd, arg);
	if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && emulated(fd))
		return emu_dup(fd, r);
	return r;
}

int fcntl(int fd, int cmd, ...)
{
	ensure();
	va_list ap;
	va_start(ap, cmd);
	void *arg = va_arg(ap, void *); /* as glibc reads it: an int or a pointer */
	va_end(ap);
	return fcntl_common(real_fcntl, fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...)
{
	ensure();
	va_list ap;
	va_start(ap, cmd);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return fcntl_common(real_fcntl64, fd, cmd, arg);
}

int ioctl(int fd, unsigned long request, ...)
{
	ensure();
	va_list ap;
	va_start(ap, request);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	/* do_vfs_ioctl() answers these for any fd, before the driver: on the placeholder itself,
	 * so close-on-exec and non-blocking really change on this process's descriptor */
	if (request == FIOCLEX || request == FIONCLEX || request == FIONBIO || request == FIOASYNC)
		return real_ioctl(fd, request, arg);
	return emulated(fd) ? emu_ioctl(fd, request, arg) : real_ioctl(fd, request, arg);
}

int uname(struct utsname *buf)
{
	ensure();
	int r = real_uname(buf);
	if (r == 0 && machine && *machine) {
		strncpy(buf->machine, machine, sizeof(buf->machine) - 1);
		buf->machine[sizeof(buf->machine) - 1] = '\0';
	}
	return r;
}

/* ---- the simulated host's files: $KVMSIM_ROOT holds /proc/device-tree, /proc/cpuinfo and
 * /sys/module/kvm* as the simulated kernel shows them (kvmsim.hostfs); /dev/kvm exists when
 * $KVMSIM_DEV_KVM is 1.
 *
 * A path is looked up as the kernel walks it (fs/namei.c): component by component from the
 * directory it starts in, each symlink's target spliced in where it was met (so `..` after
 * a symlinked directory climbs from where the link led, not from its text), `..` at the
 * root staying there.  The real directories are opened O_PATH on the way; where one is this
 * machine's /dev, /proc or /sys/module (by identity, not by name), the next component decides:
 * kvm under /dev is the simulated device, cpuinfo or device-tree under /proc and kvm* under
 * /sys/module are the host's copies under $KVMSIM_ROOT.
 *
 * Only a path with such a name in it is walked at all (the cheap test, no system call); the
 * walk's buffers are one mmap'd scratch area, so an intercepted call needs well under 1 KiB
 * of stack (a signal handler on an 8 KiB sigaltstack may open a file).  A name that says
 * none of those can reach the simulated device only through a symlink: open() learns that
 * from the real kernel's answer (a character device 10:232), and the stat family does not
 * (README "Choices"). ---- */

enum { PATH_REAL, PATH_DEV_KVM, PATH_VIEW };
#define SCRATCH (3 * PATH_MAX) /* the viewed path, the rest of the walk, a symlink's target */
#define MAX_LINKS 40           /* the kernel's MAXSYMLINKS */

struct lookup {
	int kind;
	char *buf; /* PATH_VIEW: the path under $KVMSIM_ROOT (in the mmap'd scratch) */
};

struct dir_id {
	dev_t dev;
	ino_t ino;
};
static struct dir_id dev_dir, proc_dir, module_dir; /* this machine's, taken at init */

static void take_dir_ids(void)
{
	struct stat st;
	struct {
		const char *path;
		struct dir_id *id;
	} dirs[] = {{"/dev", &dev_dir}, {"/proc", &proc_dir}, {"/sys/module", &module_dir}};
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++)
		if (real_fstatat(AT_FDCWD, dirs[i].path, &st, 0) == 0)
			*dirs[i].id = (struct dir_id){st.st_dev, st.st_ino};
}

static int same_dir(const struct stat *st, const struct dir_id *id)
{
	return id->ino && st->st_dev == id->dev && st->st_ino == id->ino;
}

/* (not inline in the hooks: their path is declared nonnull, and a NULL does arrive) */
static int empty(const char *p)
{
	return !p || !*p;
}

static int component_is(const char *p, size_t len, const char *name)
{
	return len == strlen(name) && !memcmp(p, name, len);
}

/* The cheap test: could path name a simulated file?  A component kvm, cpuinfo or
 * device-tree, or kvm* after module (or first, for a walk that starts in /sys/module). */
static int hinted(const char *path)
{
	const char *p = path, *prev = NULL;
	size_t prev_len = 0;
	while (*p) {
		while (*p == '/')
			p++;
		const char *end = p;
		while (*end && *end != '/')
			end++;
		size_t len = (size_t)(end - p);
		if (component_is(p, len, "kvm") || component_is(p, len, "cpuinfo") || component_is(p, len, "device-tree"))
			return 1;
		if (len >= 3 && !memcmp(p, "kvm", 3) &&
		    ((prev && component_is(prev, prev_len, "module")) || (!prev && path[0] != '/')))
			return 1;
		prev = p;
		prev_len = len;
		p = end;
	}
	return 0;
}

static int host_has_dev_kvm(void);

/* Write root + prefix + tail into out; 0 when it fits. */
static int viewed_path(char *out, const char *prefix, const char *tail)
{
	int w = snprintf(out, PATH_MAX, "%s%s%s", host_root, prefix, tail);
	return w > 0 && w < PATH_MAX ? 0 : -1;
}

/* Walk path from dirfd (see above); scratch is SCRATCH bytes.  PATH_REAL where the path
 * is this machine's, or where the walk itself fails (the real call then says why). */
static int walk(int dirfd, const char *path, int follow, char *scratch)
{
	char *out = scratch, *rest = scratch + PATH_MAX, *link = scratch + 2 * PATH_MAX;
	size_t n = strlen(path);
	if (n >= PATH_MAX)
		return PATH_REAL;
	memcpy(rest, path, n + 1);
	int cur = real_openat(rest[0] == '/' ? AT_FDCWD : dirfd, rest[0] == '/' ? "/" : ".",
	                      O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (cur < 0)
		return PATH_REAL;
	int kind = PATH_REAL, links = 0;
	char *p = rest;
	for (;;) {
		while (*p == '/')
			p++;
		if (!*p)
			break;
		char *end = p;
		while (*end && *end != '/')
			end++;
		size_t len = (size_t)(end - p);
		char *next = end;
		while (*next == '/')
			next++;
		int last = !*next;
		struct stat st;
		if (fstat(cur, &st) < 0)
			break;
		if (same_dir(&st, &dev_dir) && component_is(p, len, "kvm")) {
			kind = last ? PATH_DEV_KVM : PATH_REAL;
			break;
		}
		if (host_root && ((same_dir(&st, &proc_dir) && (component_is(p, len, "cpuinfo") ||
		                                                 component_is(p, len, "device-tree"))) ||
		                  (same_dir(&st, &module_dir) && len >= 3 && !memcmp(p, "kvm", 3)))) {
			if (viewed_path(out, same_dir(&st, &proc_dir) ? "/proc/" : "/sys/module/", p) == 0)
				kind = PATH_VIEW;
			break;
		}
		if ((last && !follow) || len > NAME_MAX)
			break;
		char name[NAME_MAX + 1];
		memcpy(name, p, len);
		name[len] = 0;
		if (real_fstatat(cur, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			break;
		if (S_ISLNK(st.st_mode)) { /* splice the target in front of what is left */
			ssize_t t = readlinkat(cur, name, link, PATH_MAX - 1);
			size_t left = strlen(next);
			if (++links > MAX_LINKS || t <= 0 || (size_t)t + 1 + left >= PATH_MAX)
				break;
			if (left) {
				memmove(rest + t + 1, next, left + 1);
				rest[t] = '/';
			} else
				rest[t] = 0;
			memcpy(rest, link, (size_t)t);
			p = rest;
			if (link[0] == '/') {
				int root = real_openat(AT_FDCWD, "/", O_PATH | O_DIRECTORY | O_CLOEXEC);
				if (root < 0)
					break;
				real_close(cur);
				cur = root;
			}
			continue;
		}
		if (last || !S_ISDIR(st.st_mode))
			break;
		int sub = real_openat(cur, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (sub < 0)
			break;
		real_close(cur);
		cur = sub;
		p = next;
	}
	real_close(cur);
	return kind;
}

/* What path (from dirfd) names: this machine's file, the simulated /dev/kvm, or the host's
 * copy (l->buf).  Release with lookup_done(). */
static int lookup(int dirfd, const char *path, int follow, struct lookup *l)
{
	l->kind = PATH_REAL;
	l->buf = NULL;
	if (!path || !*path || !hinted(path))
		return PATH_REAL;
	if (!strcmp(path, "/dev/kvm"))
		return l->kind = PATH_DEV_KVM;
	void *scratch = mmap(NULL, SCRATCH, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (scratch == MAP_FAILED)
		return PATH_REAL;
	l->buf = scratch;
	return l->kind = walk(dirfd, path, follow, scratch);
}

static void lookup_done(struct lookup *l)
{
	if (l->buf) {
		int e = errno;
		munmap(l->buf, SCRATCH);
		errno = e;
		l->buf = NULL;
	}
}

/* The path the real call is given: the host's copy, or the program's own. */
static const char *real_path(const struct lookup *l, const char *path)
{
	return l->kind == PATH_VIEW ? l->buf : path;
}

static int host_has_dev_kvm(void)
{
	return host_dev_kvm;
}

/* A stat of the simulated /dev/kvm: a character device 10:232, mode 0660, root's; or ENOENT
 * where the host has none. */
static int dev_kvm_stat(struct stat *st)
{
	if (!host_has_dev_kvm()) {
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

/* Is this open file this machine's real /dev/kvm (reached through a symlink)? */
static int is_real_dev_kvm(int fd)
{
	struct stat st;
	return fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(10, 232);
}

/* An open of a path that names no simulated file by name: the real one, unless the real
 * kernel says it opened /dev/kvm (a symlink to it). */
static int real_or_dev_kvm(int fd, int flags)
{
	if (fd < 0 || !is_real_dev_kvm(fd))
		return fd;
	real_close(fd);
	return kvm_open(flags);
}

#define OPEN_HOOK(name, real, dirfd_expr, dirfd_param...)                                                 \
	int name(dirfd_param const char *path, int flags, ...)                                             \
	{                                                                                                   \
		ensure();                                                                                   \
		va_list ap;                                                                                 \
		va_start(ap, flags);                                                                        \
		mode_t mode = mode_arg(flags, ap);                                                          \
		va_end(ap);                                                                                 \
		struct lookup l;                                                                            \
		int kind = lookup(dirfd_expr, path, !(flags & O_NOFOLLOW), &l), fd;                        \
		if (kind == PATH_DEV_KVM)                                                                   \
			fd = kvm_open(flags);                                                               \
		else if (kind == PATH_VIEW)                                                                 \
			fd = real(OPEN_ARGS_##dirfd_expr real_path(&l, path), flags, mode);                 \
		else                                                                                        \
			fd = real_or_dev_kvm(real(OPEN_ARGS_##dirfd_expr path, flags, mode), flags);        \
		lookup_done(&l);                                                                            \
		return fd;                                                                                  \
	}
#define OPEN_ARGS_AT_FDCWD
#define OPEN_ARGS_dirfd dirfd,

OPEN_HOOK(open, real_open, AT_FDCWD, )
OPEN_HOOK(open64, real_open64, AT_FDCWD, )
OPEN_HOOK(openat, real_openat, dirfd, int dirfd, )
OPEN_HOOK(openat64, real_openat64, dirfd, int dirfd, )

/* access(2)/faccessat(2) of the simulated /dev/kvm: it exists where the host has it */
int access(const char *path, int mode)
{
	return faccessat(AT_FDCWD, path, mode, 0);
}

int faccessat(int dirfd, const char *path, int mode, int flags)
{
	ensure();
	struct lookup l;
	struct stat st;
	int kind = lookup(dirfd, path, !(flags & AT_SYMLINK_NOFOLLOW), &l);
	int r = kind == PATH_DEV_KVM ? dev_kvm_stat(&st) : real_faccessat(dirfd, real_path(&l, path), mode, flags);
	lookup_done(&l);
	return r;
}

int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
	ensure();
	if ((flags & AT_EMPTY_PATH) && empty(path))
		return emulated(dirfd) ? emulated_stat(dirfd, st) : real_fstatat(dirfd, path, st, flags);
	struct lookup l;
	int kind = lookup(dirfd, path, !(flags & AT_SYMLINK_NOFOLLOW), &l);
	int r = kind == PATH_DEV_KVM ? dev_kvm_stat(st) : real_fstatat(dirfd, real_path(&l, path), st, flags);
	lookup_done(&l);
	return r;
}

int stat(const char *path, struct stat *st) { return fstatat(AT_FDCWD, path, st, 0); }
int lstat(const char *path, struct stat *st) { return fstatat(AT_FDCWD, path, st, AT_SYMLINK_NOFOLLOW); }

FILE *fopen(const char *path, const char *mode)
{
	ensure();
	struct lookup l;
	FILE *f;
	if (lookup(AT_FDCWD, path, 1, &l) == PATH_DEV_KVM) {
		int fd = emu_open("/dev/kvm", O_RDWR | O_CLOEXEC);
		f = fd < 0 ? NULL : fdopen(fd, mode);
	} else
		f = real_fopen(real_path(&l, path), mode);
	lookup_done(&l);
	return f;
}

DIR *opendir(const char *path)
{
	ensure();
	struct lookup l;
	lookup(AT_FDCWD, path, 1, &l);
	DIR *d = real_opendir(real_path(&l, path));
	lookup_done(&l);
	return d;
}

/* the same under their 64-bit names (what programs built with _FILE_OFFSET_BITS=64 call; on
 * 64-bit Linux struct stat64 is struct stat) */
int stat64(const char *path, struct stat64 *st) { return stat(path, (struct stat *)st); }
int lstat64(const char *path, struct stat64 *st) { return lstat(path, (struct stat *)st); }
int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
	return fstatat(dirfd, path, (struct stat *)st, flags);
}
FILE *fopen64(const char *path, const char *mode) { return fopen(path, mode); }

/* statx(2), as coreutils' stat and ls call it */
int statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *stx)
{
	ensure();
	if (!real_statx) {
		errno = ENOSYS;
		return -1;
	}
	if ((flags & AT_EMPTY_PATH) && empty(path))
		return real_statx(dirfd, path, flags, mask, stx);
	struct lookup l;
	struct stat st;
	int r, kind = lookup(dirfd, path, !(flags & AT_SYMLINK_NOFOLLOW), &l);
	if (kind == PATH_DEV_KVM) {
		r = dev_kvm_stat(&st);
		if (r == 0) {
			memset(stx, 0, sizeof(*stx));
			stx->stx_mask = STATX_BASIC_STATS;
			stx->stx_mode = st.st_mode;
			stx->stx_nlink = st.st_nlink;
			stx->stx_blksize = st.st_blksize;
			stx->stx_rdev_major = major(st.st_rdev);
			stx->stx_rdev_minor = minor(st.st_rdev);
		}
	} else
		r = real_statx(dirfd, real_path(&l, path), flags, mask, stx);
	lookup_done(&l);
	return r;
}

/* ---- what the real device answers besides ioctl (measured on an x86 /dev/kvm and its VM
 * fds): read, write and their kin are EINVAL (kvm_chardev_ops and kvm_vm_fops have no read or
 * write), but pread/pwrite on a VM fd are ESPIPE (an anon inode file has no FMODE_PREAD); fstat is /dev/kvm's character device, or for a VM fd the anon inode every
 * anon_inode file shares (an eventfd's).  lseek is 0 and mmap ENODEV on both, as on the
 * /dev/null placeholder already.  /proc/self/fd still shows /dev/null (README "Choices"). */

#define FAILS_ON_EMULATED(type, name, params, args, err)                                                   \
	type name params                                                                                     \
	{                                                                                                    \
		ensure();                                                                                    \
		if (emulated(fd)) {                                                                          \
			errno = (err);                                                                       \
			return -1;                                                                           \
		}                                                                                            \
		return real_##name args;                                                                     \
	}
#define POSITIONED_ERR (vm_of[fd] ? ESPIPE : EINVAL) /* rw_verify_area: no FMODE_PREAD on an anon inode */

FAILS_ON_EMULATED(ssize_t, read, (int fd, void *buf, size_t n), (fd, buf, n), EINVAL)
FAILS_ON_EMULATED(ssize_t, write, (int fd, const void *buf, size_t n), (fd, buf, n), EINVAL)
FAILS_ON_EMULATED(ssize_t, pread, (int fd, void *buf, size_t n, off_t off), (fd, buf, n, off), POSITIONED_ERR)
FAILS_ON_EMULATED(ssize_t, pwrite, (int fd, const void *buf, size_t n, off_t off), (fd, buf, n, off), POSITIONED_ERR)
FAILS_ON_EMULATED(ssize_t, readv, (int fd, const struct iovec *iov, int n), (fd, iov, n), EINVAL)
FAILS_ON_EMULATED(ssize_t, writev, (int fd, const struct iovec *iov, int n), (fd, iov, n), EINVAL)
ssize_t pread64(int fd, void *buf, size_t n, off_t off) { return pread(fd, buf, n, off); }
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) { return pwrite(fd, buf, n, off); }

/* The inode every anon_inode file shares (eventfd's, a VM fd's): its stat. */
static int anon_inode_stat(struct stat *st)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	if (efd < 0)
		return -1;
	int r = real_fstat(efd, st);
	real_close(efd);
	return r;
}

static int emulated_stat(int fd, struct stat *st)
{
	return vm_of[fd] ? anon_inode_stat(st) : dev_kvm_stat(st);
}

int fstat(int fd, struct stat *st)
{
	ensure();
	return emulated(fd) ? emulated_stat(fd, st) : real_fstat(fd, st);
}

int fstat64(int fd, struct stat64 *st) { return fstat(fd, (struct stat *)st); }

/* fclose() closes its descriptor inside libc, past close(): release the simulated file first. */
int fclose(FILE *f)
{
	ensure();
	int fd = f ? fileno(f) : -1;
	if (emulated(fd))
		emu_release(fd);
	return real_fclose(f);
}
