/*
 * stack_args: the shim touches an ioctl's argument directly only on the calling thread's own
 * live stack.  Prints one line per case: the compat-caps ioctl's result or errno name.
 *
 *   stack      the struct on this thread's stack                  -> 0
 *   thread     the struct on a second thread's stack              -> 0
 *   altstack   from a handler on a sigaltstack, a pointer into an
 *              unmapped hole between that stack and the thread's  -> EFAULT (never a crash)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define KVM_CREATE_VM 0x2000ae01ul
#define KVM_PPC_GET_COMPAT_CAPS 0x2000aeb8ul

static int vm;
static void *hole;

static void report(const char *name, int r)
{
	printf("%s %s\n", name, r == 0 ? "0" : errno == EFAULT ? "EFAULT" : strerror(errno));
}

static int on_stack(void)
{
	uint64_t caps[3] = {24, 0, 0};
	return ioctl(vm, KVM_PPC_GET_COMPAT_CAPS, caps) == 0 && caps[2] != 0 ? 0 : -1;
}

static void *thread_main(void *arg)
{
	(void)arg;
	report("thread", on_stack());
	return NULL;
}

static void on_signal(int sig)
{
	(void)sig;
	report("altstack", ioctl(vm, KVM_PPC_GET_COMPAT_CAPS, hole));
}

int main(void)
{
	int dev = open("/dev/kvm", O_RDWR);
	vm = ioctl(dev, KVM_CREATE_VM, 0);
	if (vm < 0) {
		perror("KVM_CREATE_VM");
		return 1;
	}
	report("stack", on_stack());
	pthread_t t;
	pthread_create(&t, NULL, thread_main, NULL);
	pthread_join(t, NULL);

	/* a signal stack, then a hole above it (below this thread's stack) */
	size_t size = 1 << 16;
	char *alt = mmap(NULL, 3 * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	munmap(alt + size, size); /* the hole */
	hole = alt + size + 64;
	if ((uintptr_t)hole > (uintptr_t)&dev) {
		printf("altstack skipped: the mapping is above the stack\n");
		return 0;
	}
	stack_t ss = {.ss_sp = alt, .ss_size = size};
	sigaltstack(&ss, NULL);
	struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_ONSTACK};
	sigaction(SIGUSR1, &sa, NULL);
	raise(SIGUSR1);
	return 0;
}
