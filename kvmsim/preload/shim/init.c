/* init.c: libc's own entry points and the environment, found once, before the first hook
 * needs them: at load (the constructor), or earlier when another library's constructor calls
 * a hook first (libselinux calls fopen).  pthread_once makes "once" hold for threads too. */
#include "shim.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

SHIM_INTERNAL struct real_libc real;
SHIM_INTERNAL struct shim_config cfg = {.dev_kvm = 1, .deadline_ns = 30LL * 1000000000LL};
SHIM_INTERNAL void channel_init(void);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int running; /* shim_init has finished */

/* Every libc entry point a hook calls through.  One missing (a libc without it) is never a
 * NULL call later: the 64-bit aliases fall back to their plain names (musl 1.2.4 dropped
 * them; off_t is 64-bit there), statx to ENOSYS (a libc older than 2.28: callers fall back
 * to fstatat), and anything else stops the program at load with one line naming it. */
#define FIND(name) (real.name = dlsym(RTLD_NEXT, #name))
#define NEED(name)                                                                                 \
	do {                                                                                           \
		if (!FIND(name))                                                                           \
			missing(#name);                                                                        \
	} while (0)

static void missing(const char *name)
{
	static const char prefix[] = "kvmsim shim: this libc has no ";
	(void)!write(2, prefix, sizeof(prefix) - 1);
	(void)!write(2, name, strlen(name));
	(void)!write(2, "\n", 1);
	_exit(127);
}

static int no_statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *buf)
{
	(void)dirfd, (void)path, (void)flags, (void)mask, (void)buf;
	errno = ENOSYS;
	return -1;
}

static int env_is(const char *name, const char *value)
{
	const char *v = getenv(name);
	return v && !strcmp(v, value);
}

static void shim_init(void)
{
	NEED(open);
	NEED(openat);
	if (!FIND(open64))
		real.open64 = real.open;
	if (!FIND(openat64))
		real.openat64 = real.openat;
	if (!FIND(statx))
		real.statx = no_statx;
	NEED(close);
	NEED(ioctl);
	NEED(uname);
	NEED(fcntl);
	NEED(faccessat);
	NEED(access);
	NEED(fstatat);
	NEED(fstat);
	NEED(fopen);
	NEED(opendir);
	NEED(read);
	NEED(write);
	NEED(pread);
	NEED(pwrite);
	NEED(readv);
	NEED(writev);
	NEED(lseek);
	NEED(shutdown);
	NEED(readlink);
	NEED(readlinkat);
	cfg.socket = getenv("KVMSIM_SOCKET");
	cfg.machine = getenv("KVMSIM_MACHINE");
	const char *root = getenv("KVMSIM_ROOT");
	cfg.root = root && *root ? root : NULL;
	cfg.dev_kvm = !env_is("KVMSIM_DEV_KVM", "0");
	cfg.want_socket = env_is("KVMSIM_CHANNEL", "socket");
	cfg.memory_pipe = env_is("KVMSIM_MEMORY", "pipe");
	const char *timeout = getenv("KVMSIM_TIMEOUT"); /* seconds (SECURITY.md) */
	if (timeout && *timeout) {
		char *end;
		double seconds = strtod(timeout, &end);
		if (!*end && seconds > 0 && seconds < 1e6)
			cfg.deadline_ns = (long long)(seconds * 1e9);
	}
	namei_init();
	channel_init();
	__atomic_store_n(&running, 1, __ATOMIC_RELEASE);
}

SHIM_INTERNAL int shim_running(void)
{
	return __atomic_load_n(&running, __ATOMIC_ACQUIRE);
}

SHIM_INTERNAL void shim_ready(void)
{
	pthread_once(&once, shim_init);
}

__attribute__((constructor)) static void shim_load(void)
{
	shim_ready();
}
