/*
 * small_stacks: every intercepted call on a small stack.  Each stack is 8 KiB with a
 * PROT_NONE guard page below it, so a shim that needs more crashes (SIGSEGV) instead of
 * silently writing into whatever lies below.  Prints one line per place:
 *
 *   <place> api=<KVM_GET_API_VERSION> hostname=<fd ok> cpuinfo=<stat ok> access=<ok> stat=<rdev>
 *
 * places: main (the ordinary stack), context (an 8 KiB makecontext stack), altstack (a
 * handler on an 8 KiB sigaltstack).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <ucontext.h>
#include <unistd.h>

#define KVM_GET_API_VERSION 0x2000ae00ul /* _IO(0xAE, 0), the same on every arch */
#define SMALL 8192

static char line[256];

static void probe(const char *place)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	int api = kvm >= 0 ? ioctl(kvm, KVM_GET_API_VERSION, 0) : -1;
	if (kvm >= 0)
		close(kvm);
	int host = open("/etc/hostname", O_RDONLY | O_CLOEXEC);
	if (host >= 0)
		close(host);
	struct stat st;
	int cpuinfo = stat("/proc/cpuinfo", &st) == 0;
	int ok = access("/dev/kvm", R_OK) == 0;
	struct stat dev;
	int rdev = stat("/dev/kvm", &dev) == 0 ? (int)minor(dev.st_rdev) : -1;
	snprintf(line, sizeof(line), "%s api=%d hostname=%d cpuinfo=%d access=%d stat=%d\n", place, api, host >= 0,
	         cpuinfo, ok, rdev);
	(void)!write(1, line, strlen(line));
}

static void *guarded(void)
{
	char *m = mmap(NULL, 4096 + SMALL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return NULL;
	mprotect(m, 4096, PROT_NONE);
	return m + 4096;
}

static ucontext_t main_ctx, small_ctx;

static void on_small_stack(void) { probe("context"); }

static void handler(int sig)
{
	(void)sig;
	probe("altstack");
}

int main(void)
{
	probe("main");

	void *stack = guarded();
	getcontext(&small_ctx);
	small_ctx.uc_stack.ss_sp = stack;
	small_ctx.uc_stack.ss_size = SMALL;
	small_ctx.uc_link = &main_ctx;
	makecontext(&small_ctx, on_small_stack, 0);
	swapcontext(&main_ctx, &small_ctx);

	stack_t ss = {.ss_sp = guarded(), .ss_size = SMALL};
	sigaltstack(&ss, NULL);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sa.sa_flags = SA_ONSTACK;
	sigaction(SIGUSR1, &sa, NULL);
	raise(SIGUSR1);
	return 0;
}
