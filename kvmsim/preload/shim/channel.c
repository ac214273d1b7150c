/* channel.c: the connection to the server and one call over it.
 *
 * Frames (kvmsim/intercept/wire.py, every field big-endian) travel on the Unix socket, or,
 * when the server offers it, through the shared-memory channel (kvmsim/intercept/channel.py):
 * the same frames in a sealed memfd both sides map, a short spin then a futex instead of a
 * socket round trip.  A placeholder the server passes always comes on the socket.
 *
 * One connection per process, its own: the state below is the process's whose pid is
 * owner_pid, compared with getpid(2) on every call (no cached pid that a raw fork can fool).
 * A child made by fork() or by a raw fork/clone without CLONE_VM takes the state over as its
 * own (its copies of the parent's are dropped); a child that shares the parent's memory (vfork,
 * posix_spawn's clone(CLONE_VM|CLONE_VFORK)) must not touch it, and makes each call on a
 * connection of its own on the stack.  Whether memory is shared, kcmp(2) says; where it
 * cannot, the child is taken to share it (the safe side).
 *
 * The shim's lock serialises a process's calls on its connection.  Signals are blocked only
 * while it is taken or given back, never across the wait for the server: a stalled server
 * leaves the program killable by SIGTERM and Ctrl-C.  A handler that interrupted its own
 * thread's call fails with EINTR (it cannot speak on a connection in mid-frame). */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <endian.h>

#define HIGH_FD 900 /* where the connection's socket lives, away from the program's numbers */
#define SHM_SIZE (SHM_CONTROL + 2u * SHM_CAPACITY)
#define SHM_SEALS (F_SEAL_SHRINK | F_SEAL_GROW) /* what the memfd must carry before it is mapped */
#define SHM_SPIN_NS 300000L                     /* spin this long for an answer before sleeping */
#define SHM_SLEEP_NS 100000000L /* a sleep's length; then the socket is checked for the server's exit */

struct conn {
	int sock;
	uint64_t sock_dev, sock_ino; /* the socket's identity: a program's dup2 onto its number is noticed */
	unsigned char *shm;          /* the shared-memory channel, when the server offered one */
	uint32_t rx_seq;             /* the last s2c message taken */
	size_t rx_off, rx_len;       /* how much of it the frame reader has consumed */
	struct timespec began;       /* when the call in progress was sent */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static __thread int in_shim;      /* this thread holds the lock */
static struct conn mine = {.sock = -1};
static pid_t owner_pid, ready_pid; /* the process `mine` is; ready once it has taken it over */
static pid_t server;              /* the server's pid, from the first connection (atomic) */
/* Never connect again (atomic): a server of another user answered, or the connection broke
 * (whatever listens at the path next is not the server this process trusted).  A socket the
 * program took away (a close loop, a dup2 onto its number) is not a break: the next call
 * connects again, to the same server process only. */
static int lost;

SHIM_INTERNAL pid_t self_pid(void)
{
	return (pid_t)syscall(SYS_getpid);
}

/* ---- the process's connection ------------------------------------------------------- */

static void drop(struct conn *c, int close_socket)
{
	if (c->sock >= 0 && close_socket)
		real.close(c->sock);
	c->sock = -1;
	if (c->shm)
		munmap(c->shm, SHM_SIZE);
	c->shm = NULL;
}

/* This process is a child with memory of its own: what it inherited is its copies of the
 * parent's socket and mapping, and a lock another thread of the parent may have held. */
static void forget_parent(pid_t pid)
{
	drop(&mine, 1);
	pthread_mutex_init(&lock, NULL);
	__atomic_store_n(&ready_pid, pid, __ATOMIC_RELEASE);
}

static void child_after_fork(void)
{
	pid_t pid = self_pid();
	in_shim = 0;
	__atomic_store_n(&owner_pid, pid, __ATOMIC_RELEASE);
	forget_parent(pid);
}

SHIM_INTERNAL void channel_init(void)
{
	owner_pid = ready_pid = self_pid();
	pthread_atfork(NULL, NULL, child_after_fork);
}

/* Does this process share its memory with its parent (a vfork child)?  1 when unknown. */
static int shares_parents_memory(pid_t pid)
{
	long r = syscall(SYS_kcmp, pid, getppid(), KCMP_VM, 0, 0);
	return r != 1 && r != 2; /* 0: the same mm; -1: kcmp cannot say */
}

/* Whose is `mine` to this process: 1 its own (taken over if it was a child's inheritance),
 * 0 not (the call needs a connection of its own). */
static int owns_state(pid_t pid)
{
	pid_t owner = __atomic_load_n(&owner_pid, __ATOMIC_ACQUIRE);
	if (owner == pid) {
		while (__atomic_load_n(&ready_pid, __ATOMIC_ACQUIRE) != pid) /* another thread takes it over */
			sched_yield();
		return 1;
	}
	if (shares_parents_memory(pid))
		return 0;
	if (__atomic_compare_exchange_n(&owner_pid, &owner, pid, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
		forget_parent(pid); /* a raw fork or clone: no atfork handler ran */
		return 1;
	}
	return owns_state(pid);
}

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

static void leave(void)
{
	sigset_t all, saved;
	int e = errno;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &saved);
	in_shim = 0;
	pthread_mutex_unlock(&lock);
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	errno = e;
}

/* ---- deadlines ---------------------------------------------------------------------- */

static long long elapsed_ns(const struct timespec *since)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - since->tv_sec) * 1000000000LL + (now.tv_nsec - since->tv_nsec);
}

/* Nanoseconds left before the call in progress fails (<= 0: it has failed). */
static long long time_left(const struct conn *c)
{
	return cfg.deadline_ns - elapsed_ns(&c->began);
}

/* Wait until the socket has something to read (or the peer has gone), within the call's
 * deadline; a handler that runs meanwhile does not end the wait.  -1 past the deadline. */
static int wait_readable(const struct conn *c)
{
	for (;;) {
		struct pollfd pfd = {.fd = c->sock, .events = POLLIN};
		long long left = time_left(c);
		if (left <= 0)
			return -1;
		int ready = poll(&pfd, 1, (int)(left / 1000000 + 1));
		if (ready > 0)
			return 0;
		if (ready < 0 && errno != EINTR)
			return -1;
	}
}

/* ---- framing: the socket ------------------------------------------------------------ */

static int sock_send(const struct conn *c, const void *buf, size_t n)
{
	const char *p = buf;
	while (n) {
		ssize_t r = send(c->sock, p, n, MSG_NOSIGNAL);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

/* Exactly n bytes: never more, so a placeholder's byte after a frame stays for recv_fd. */
static int sock_recv(const struct conn *c, void *buf, size_t n)
{
	char *p = buf;
	while (n) {
		if (wait_readable(c))
			return -1;
		ssize_t r = recv(c->sock, p, n, MSG_DONTWAIT);
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

/* ---- framing: the shared-memory channel --------------------------------------------- */

static volatile uint32_t *shm_word(const struct conn *c, int i)
{
	return (volatile uint32_t *)(void *)(c->shm + 4 * i);
}

static long futex(volatile uint32_t *word, int op, uint32_t val, const struct timespec *timeout)
{
	return syscall(SYS_futex, word, op, val, timeout, NULL, 0);
}

/* Has the server gone?  On the shared channel only placeholders come on the socket. */
static int still_ours(const struct conn *c);

static int server_gone(const struct conn *c)
{
	struct pollfd p = {.fd = c->sock, .events = POLLIN};
	char byte;
	return !still_ours(c) || (poll(&p, 1, 0) != 0 && recv(c->sock, &byte, 1, MSG_PEEK | MSG_DONTWAIT) <= 0);
}

/* The next s2c message: spin a while (the server is working on it), then sleep on the futex. */
static int shm_next(struct conn *c)
{
	volatile uint32_t *seq = shm_word(c, S2C_SEQ);
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (unsigned i = 1; __atomic_load_n(seq, __ATOMIC_ACQUIRE) == c->rx_seq; i++) {
		if (i % 64 == 0 && elapsed_ns(&start) > SHM_SPIN_NS) {
			const struct timespec sleep = {0, SHM_SLEEP_NS};
			__atomic_store_n(shm_word(c, S2C_WAIT), 1, __ATOMIC_SEQ_CST); /* then read seq: Dekker */
			while (__atomic_load_n(seq, __ATOMIC_SEQ_CST) == c->rx_seq) {
				if (futex(seq, FUTEX_WAIT, c->rx_seq, &sleep) < 0 && errno == ETIMEDOUT &&
				    (server_gone(c) || time_left(c) <= 0)) {
					__atomic_store_n(shm_word(c, S2C_WAIT), 0, __ATOMIC_RELAXED);
					return -1;
				}
			}
			__atomic_store_n(shm_word(c, S2C_WAIT), 0, __ATOMIC_RELAXED);
			break;
		}
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#endif
	}
	c->rx_seq = __atomic_load_n(seq, __ATOMIC_ACQUIRE);
	c->rx_len = __atomic_load_n(shm_word(c, S2C_LEN), __ATOMIC_RELAXED);
	c->rx_off = 0;
	return c->rx_len >= HEADER_SIZE && c->rx_len <= SHM_CAPACITY ? 0 : -1;
}

/* Bytes of the current frame; a frame never spans two messages. */
static int shm_recv(struct conn *c, void *buf, size_t n)
{
	if (c->rx_off == c->rx_len && shm_next(c))
		return -1;
	if (n > c->rx_len - c->rx_off)
		return -1;
	memcpy(buf, c->shm + SHM_CONTROL + SHM_CAPACITY + c->rx_off, n);
	c->rx_off += n;
	return 0;
}

/* One frame as one c2s message: write it, its length, bump the sequence, wake a sleeper. */
static int shm_send(struct conn *c, const unsigned char *hdr, const void *a, size_t an, const void *b, size_t bn)
{
	unsigned char *area = c->shm + SHM_CONTROL;
	if (HEADER_SIZE + an + bn > SHM_CAPACITY)
		return -1;
	memcpy(area, hdr, HEADER_SIZE);
	if (an)
		memcpy(area + HEADER_SIZE, a, an);
	if (bn)
		memcpy(area + HEADER_SIZE + an, b, bn);
	__atomic_store_n(shm_word(c, C2S_LEN), (uint32_t)(HEADER_SIZE + an + bn), __ATOMIC_RELAXED);
	__atomic_fetch_add(shm_word(c, C2S_SEQ), 1, __ATOMIC_SEQ_CST); /* publishes the frame; a full fence */
	if (__atomic_load_n(shm_word(c, C2S_WAIT), __ATOMIC_SEQ_CST))
		futex(shm_word(c, C2S_SEQ), FUTEX_WAKE, 1, NULL);
	c->rx_off = c->rx_len = 0; /* the answer to this is a new message */
	return 0;
}

/* ---- frames, whichever channel ------------------------------------------------------ */

static int recv_bytes(struct conn *c, void *buf, size_t n)
{
	return c->shm ? shm_recv(c, buf, n) : sock_recv(c, buf, n);
}

static int send_frame(struct conn *c, uint16_t type, const void *a, size_t an, const void *b, size_t bn)
{
	unsigned char hdr[HEADER_SIZE];
	uint32_t magic = htobe32(KVMSIM_MAGIC), len = htobe32((uint32_t)(an + bn));
	uint16_t ver = htobe16(KVMSIM_VERSION), typ = htobe16(type);
	memcpy(hdr, &magic, 4);
	memcpy(hdr + 4, &ver, 2);
	memcpy(hdr + 6, &typ, 2);
	memcpy(hdr + 8, &len, 4);
	if (c->shm)
		return shm_send(c, hdr, a, an, b, bn);
	if (sock_send(c, hdr, sizeof(hdr)) || (an && sock_send(c, a, an)) || (bn && sock_send(c, b, bn)))
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

static int recv_header(struct conn *c, uint16_t *type, uint32_t *len)
{
	unsigned char hdr[HEADER_SIZE];
	return recv_bytes(c, hdr, sizeof(hdr)) ? -1 : parse_header(hdr, type, len);
}

/* One message on the socket with its descriptors (SCM_RIGHTS): up to n bytes into buf, the
 * first descriptor into *fd (the rest closed), *truncated when the kernel dropped some
 * because this process has no room (EMFILE).  The bytes read, or -1. */
static ssize_t recv_with_fd(const struct conn *c, void *buf, size_t n, int cloexec, int *fd, int *truncated)
{
	char control[CMSG_SPACE(4 * sizeof(int))];
	struct iovec iov = {.iov_base = buf, .iov_len = n};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control)};
	ssize_t r;
	*fd = -1;
	if (wait_readable(c))
		return -1;
	do
		r = recvmsg(c->sock, &mh, cloexec ? MSG_CMSG_CLOEXEC : 0);
	while (r < 0 && errno == EINTR);
	for (struct cmsghdr *m = r > 0 ? CMSG_FIRSTHDR(&mh) : NULL; m; m = CMSG_NXTHDR(&mh, m)) {
		if (m->cmsg_level != SOL_SOCKET || m->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0; i < (m->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
			int got;
			memcpy(&got, CMSG_DATA(m) + i * sizeof(int), sizeof(int));
			if (*fd < 0)
				*fd = got;
			else
				real.close(got); /* one descriptor a message, nothing else */
		}
	}
	*truncated = r > 0 && (mh.msg_flags & MSG_CTRUNC);
	return r;
}

/* The placeholder that follows a RESULT_NEW_FD: 0 with *fd, -1 with errno (EMFILE: this
 * process has no room for it, and the server releases the file when it sees that). */
static int recv_fd(struct conn *c, int cloexec, int *fd)
{
	char byte;
	int truncated = 0;
	*fd = -1;
	ssize_t r = still_ours(c) ? recv_with_fd(c, &byte, 1, cloexec, fd, &truncated) : -1;
	if (r == 1 && *fd >= 0)
		return 0;
	if (*fd >= 0)
		real.close(*fd);
	*fd = -1;
	errno = r == 1 && truncated ? EMFILE : EIO;
	return -1;
}

/* ---- connecting --------------------------------------------------------------------- */

/* Ask for the shared-memory channel.  0 with c->shm set, or 0 on the socket when the server
 * cannot offer it (or $KVMSIM_CHANNEL=socket); -1 when the connection broke. */
static int open_channel(struct conn *c)
{
	unsigned char hdr[HEADER_SIZE];
	uint16_t type;
	uint32_t len, cap;
	int fd, truncated;
	if (send_frame(c, SHM, NULL, 0, NULL, 0))
		return -1;
	ssize_t r = recv_with_fd(c, hdr, sizeof(hdr), 1, &fd, &truncated);
	if (r <= 0 || ((size_t)r < sizeof(hdr) && sock_recv(c, hdr + r, sizeof(hdr) - (size_t)r)) ||
	    parse_header(hdr, &type, &len))
		goto broken;
	if (type == SHM_READY && len == 4 && fd >= 0) {
		struct stat st;
		if (sock_recv(c, &cap, 4) || be32toh(cap) != SHM_CAPACITY || real.fstat(fd, &st) ||
		    st.st_size != (off_t)SHM_SIZE)
			goto broken;
		/* a memfd the server could still shrink would SIGBUS this program under its mapping */
		int seals = real.fcntl(fd, F_GET_SEALS);
		if (seals < 0 || (seals & SHM_SEALS) != SHM_SEALS) {
			static const char msg[] = "kvmsim shim: refusing the server's shared memory: it is not sealed\n";
			(void)!real.write(2, msg, sizeof(msg) - 1);
			goto broken;
		}
		void *map = sys_mmap(NULL, SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		real.close(fd);
		if (map == MAP_FAILED)
			return -1;
		c->shm = map;
		c->rx_seq = __atomic_load_n(shm_word(c, S2C_SEQ), __ATOMIC_ACQUIRE);
		c->rx_off = c->rx_len = 0;
		return 0;
	}
	if (type == RESULT && len == RESULT_SIZE && fd < 0) { /* ENOSYS: this server keeps the socket */
		unsigned char payload[RESULT_SIZE];
		return sock_recv(c, payload, sizeof(payload));
	}
broken:
	if (fd >= 0)
		real.close(fd);
	return -1;
}

/* May the server at the other end touch this process?  Our own uid or root, and, once this
 * process has met its server, that same process (a socket that reappears at the path after
 * the server went is someone else's).  *pid the server's. */
static int trusted_server(const struct conn *c, pid_t *pid)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	pid_t known = __atomic_load_n(&server, __ATOMIC_ACQUIRE);
	if (getsockopt(c->sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return 0;
	*pid = cred.pid;
	if ((cred.uid == getuid() || cred.uid == 0) && (!known || known == cred.pid))
		return 1;
	char msg[512];
	int n = known && known != cred.pid
	            ? snprintf(msg, sizeof(msg), "kvmsim shim: refusing the server at %s: pid %d, not the server (pid %d)\n",
	                       cfg.socket, (int)cred.pid, (int)known)
	            : snprintf(msg, sizeof(msg),
	                       "kvmsim shim: refusing the server at %s: it runs as uid %u, not as uid %u or root\n",
	                       cfg.socket, (unsigned)cred.uid, (unsigned)getuid());
	if (n > 0)
		(void)!real.write(2, msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
	return 0;
}

/* Is c->sock still the socket this connection made?  A program's close loop or dup2 onto its
 * number takes it away (not an error: the next call connects again). */
static int still_ours(const struct conn *c)
{
	struct stat st;
	return c->sock >= 0 && real.fstat(c->sock, &st) == 0 && (uint64_t)st.st_dev == c->sock_dev &&
	       (uint64_t)st.st_ino == c->sock_ino;
}

static int connect_server(struct conn *c, int shared_channel)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	struct stat st;
	pid_t pid;
	clock_gettime(CLOCK_MONOTONIC, &c->began); /* the handshake has the same deadline as a call */
	if (c->sock >= 0 && still_ours(c)) /* the shared channel needs it too: the server ends with it */
		return 0;
	drop(c, 0); /* its number is the program's now, if anything */
	if (__atomic_load_n(&lost, __ATOMIC_ACQUIRE)) {
		errno = EIO;
		return -1;
	}
	if (!cfg.socket || strlen(cfg.socket) >= sizeof(addr.sun_path)) {
		errno = ENOENT;
		return -1;
	}
	strcpy(addr.sun_path, cfg.socket);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	c->sock = real.fcntl(fd, F_DUPFD_CLOEXEC, HIGH_FD);
	if (c->sock < 0)
		c->sock = fd;
	else
		real.close(fd);
	if (connect(c->sock, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		/* a server that answered before and is gone now (stopped, killed): EIO, as SECURITY.md
		 * says, never the ENOENT or ECONNREFUSED of its socket, which reads "no /dev/kvm" */
		int e = __atomic_load_n(&server, __ATOMIC_ACQUIRE) ? EIO : errno;
		drop(c, 1);
		errno = e;
		return -1;
	}
	if (!trusted_server(c, &pid)) {
		drop(c, 1);
		__atomic_store_n(&lost, 1, __ATOMIC_RELEASE);
		errno = EACCES;
		return -1;
	}
	__atomic_store_n(&server, pid, __ATOMIC_RELEASE);
	if (real.fstat(c->sock, &st) < 0 || (shared_channel && !cfg.want_socket && open_channel(c))) {
		drop(c, 1);
		errno = EIO;
		return -1;
	}
	c->sock_dev = (uint64_t)st.st_dev;
	c->sock_ino = (uint64_t)st.st_ino;
	return 0;
}

/* ---- one call ----------------------------------------------------------------------- */

static uint64_t be64_at(const unsigned char *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return be64toh(v);
}

static uint32_t be32_at(const unsigned char *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return be32toh(v);
}

/* The RESULT's payload (len bytes at p): the kernel's copy_to_user writes, applied in order
 * (a fault ends the call with EFAULT), then ret or errno.  A malformed RESULT breaks the
 * connection: -2. */
static long apply_result(struct usermem *m, const unsigned char *p, uint32_t len, uint32_t *flags)
{
	int64_t ret = (int64_t)be64_at(p);
	uint32_t err = be32_at(p + 8), count = be32_at(p + 16);
	size_t off = RESULT_SIZE;
	*flags = be32_at(p + 12);
	for (uint32_t i = 0; i < count; i++) {
		if (len - off < WRITE_SIZE)
			return -2;
		uint64_t addr = be64_at(p + off);
		uint32_t n = be32_at(p + off + 8), done;
		off += WRITE_SIZE;
		if (len - off < n)
			return -2;
		if (usermem_write(m, addr, p + off, n, &done) != 0) {
			errno = EFAULT;
			return -1;
		}
		off += n;
	}
	if (off != len)
		return -2;
	if (err) {
		errno = (int)err;
		return -1;
	}
	return (long)ret;
}

/* Serve the server's memory requests until its RESULT: ret, -1 with errno, -2 broken. */
static long converse(struct conn *c, struct usermem *m, uint32_t *flags)
{
	for (;;) {
		uint16_t t;
		uint32_t len;
		if (recv_header(c, &t, &len))
			return -2;
		if (t == RESULT && len >= RESULT_SIZE) {
			unsigned char *p = malloc(len);
			if (!p || recv_bytes(c, p, len)) {
				free(p);
				return -2;
			}
			long r = apply_result(m, p, len, flags);
			free(p);
			return r;
		}
		if (t == MEM_READ && len == MEM_READ_SIZE) {
			unsigned char p[MEM_READ_SIZE];
			if (recv_bytes(c, p, MEM_READ_SIZE))
				return -2;
			uint64_t addr = be64_at(p);
			uint32_t n = be32_at(p + 8);
			if (n > MAX_USER_COPY)
				return -2;
			void *buf = malloc(n ? n : 1);
			if (!buf)
				return -2;
			uint32_t err = (uint32_t)usermem_read(m, addr, buf, n), be_err = htobe32(err);
			int bad = send_frame(c, MEM_DATA, &be_err, MEM_DATA_SIZE, buf, err ? 0 : n);
			free(buf);
			if (bad)
				return -2;
			continue;
		}
		if (t == MEM_WRITE && len >= MEM_WRITE_SIZE && len - MEM_WRITE_SIZE <= MAX_USER_COPY) {
			unsigned char at[MEM_WRITE_SIZE];
			uint32_t n = len - MEM_WRITE_SIZE, done = 0;
			void *buf = malloc(n ? n : 1);
			if (!buf || recv_bytes(c, at, MEM_WRITE_SIZE) || recv_bytes(c, buf, n)) {
				free(buf);
				return -2;
			}
			uint32_t err = (uint32_t)usermem_write(m, be64_at(at), buf, n, &done);
			free(buf);
			uint32_t ack[2] = {htobe32(err), htobe32(done)};
			if (send_frame(c, MEM_ACK, ack, MEM_ACK_SIZE, NULL, 0))
				return -2;
			continue;
		}
		return -2;
	}
}

static long call_on(struct conn *c, const struct request *req, uint32_t *flags, int *new_fd)
{
	struct usermem m;
	long r;
	*flags = 0;
	if (connect_server(c, c == &mine))
		return -1;
	usermem_begin(&m, req->arg, req->type == IOCTL);
	m.inner = req->type == IOCTL ? req->inner : 0;
	clock_gettime(CLOCK_MONOTONIC, &c->began);
	r = send_frame(c, req->type, req->fixed, req->fixed_len, req->tail, req->tail_len) ? -2 : converse(c, &m, flags);
	usermem_end(&m);
	if (r != -2 && (*flags & RESULT_NEW_FD)) { /* the placeholder follows, whatever the call's end */
		int e = errno;
		if (recv_fd(c, req->cloexec, new_fd))
			r = errno == EMFILE ? -1 : -2;
		else if (r < 0) { /* the call failed after all (a write faulted): not the caller's */
			real.close(*new_fd);
			*new_fd = -1;
			errno = e;
		}
	}
	if (r == -2 && !still_ours(c)) { /* the program took the socket's number mid-call (another
	                                  * thread's dup2 or close): not the server's doing, so this
	                                  * call fails and the next one connects again, as single-threaded */
		drop(c, 0);
		errno = EIO;
		return -1;
	}
	if (r == -2) { /* a broken connection: this call fails, and every later one */
		drop(c, 1);
		__atomic_store_n(&lost, 1, __ATOMIC_RELEASE);
		errno = EIO;
		return -1;
	}
	return r;
}

SHIM_INTERNAL long kvmsim_call(const struct request *req, uint32_t *flags, int *new_fd)
{
	pid_t pid = self_pid();
	long r;
	*new_fd = -1;
	if (!owns_state(pid)) { /* a vfork child: a connection of its own, for this call */
		struct conn own = {.sock = -1};
		r = call_on(&own, req, flags, new_fd);
		int e = errno;
		drop(&own, 1);
		errno = e;
		return r;
	}
	if (enter()) /* (an IOCTL found its thread's stack before: emu_ioctl, outside the lock) */
		return -1;
	r = call_on(&mine, req, flags, new_fd);
	leave();
	return r;
}

SHIM_INTERNAL pid_t kvmsim_server_pid(void)
{
	pid_t known = __atomic_load_n(&server, __ATOMIC_ACQUIRE);
	if (known || __atomic_load_n(&lost, __ATOMIC_ACQUIRE))
		return known;
	struct conn probe = {.sock = -1}; /* learn it: a connection of its own, closed again */
	int e = errno;
	connect_server(&probe, 0);
	drop(&probe, 1);
	errno = e;
	return __atomic_load_n(&server, __ATOMIC_ACQUIRE);
}
