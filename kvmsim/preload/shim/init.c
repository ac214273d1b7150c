/* init.c: libc's own entry points and the environment, found once, before the first hook
 * needs them: at load (the constructor), or earlier when another library's constructor calls
 * a hook first (libselinux calls fopen).  pthread_once makes "once" hold for threads too. */
#include "shim.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

SHIM_INTERNAL struct real_libc real;
SHIM_INTERNAL struct shim_config cfg = {.dev_kvm = 1, .deadline_ns = 30LL * 1000000000LL};
SHIM_INTERNAL void channel_init(void);

static pthread_once_t once = PTHREAD_ONCE_INIT;

#define FIND(name) real.name = dlsym(RTLD_NEXT, #name)

static int env_is(const char *name, const char *value)
{
	const char *v = getenv(name);
	return v && !strcmp(v, value);
}

static void shim_init(void)
{
	FIND(open);
	FIND(open64);
	FIND(openat);
	FIND(openat64);
	FIND(close);
	FIND(ioctl);
	FIND(uname);
	FIND(fcntl);
	FIND(faccessat);
	FIND(fstatat);
	FIND(fstat);
	FIND(statx);
	FIND(fopen);
	FIND(opendir);
	FIND(read);
	FIND(write);
	FIND(pread);
	FIND(pwrite);
	FIND(readv);
	FIND(writev);
	FIND(lseek);
	FIND(shutdown);
	FIND(readlink);
	FIND(readlinkat);
	cfg.socket = getenv("KVMSIM_SOCKET");
	cfg.machine = getenv("KVMSIM_MACHINE");
	const char *root = getenv("KVMSIM_ROOT");
	cfg.root = root && *root ? root : NULL;
	cfg.dev_kvm = !env_is("KVMSIM_DEV_KVM", "0");
	cfg.want_socket = env_is("KVMSIM_CHANNEL", "socket");
	cfg.memory_pipe = env_is("KVMSIM_MEMORY", "pipe");
	const char *timeout = getenv("KVMSIM_TIMEOUT"); /* seconds (README "Security") */
	if (timeout && *timeout) {
		char *end;
		double seconds = strtod(timeout, &end);
		if (!*end && seconds > 0 && seconds < 1e6)
			cfg.deadline_ns = (long long)(seconds * 1e9);
	}
	namei_init();
	channel_init();
}

SHIM_INTERNAL void shim_ready(void)
{
	pthread_once(&once, shim_init);
}

__attribute__((constructor)) static void shim_load(void)
{
	shim_ready();
}
