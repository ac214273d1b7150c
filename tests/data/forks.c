/*
 * forks: a process and its children, each with threads, calling the simulated kernel at once;
 * every answer is checked, so answers that cross between processes are counted.
 *
 *   forks MODE N    MODE: fork (libc), rawfork (syscall(SYS_fork): no atfork handlers),
 *                   clone (clone(SIGCHLD) by syscall), vfork (the child closes every fd with
 *                   close_range, then _exit: the parent's files must survive), vfork-closefrom
 *                   (closefrom(3)), vfork-loop (close(fd) for each fd from 3 to 1023).
 *   The parent asks KVM_CHECK_EXTENSION(250) on its VM fd (1); each child opens /dev/kvm
 *   itself and asks KVM_GET_API_VERSION (12); N calls in each of 2 threads of each process.
 *   An inherited VM fd in a child is the parent's file, the real kernel's rule: it answers 1.
 *
 *   forks MODE N
 * Prints "ok calls=C crossed=0" or "bad ..." and exits 0 / 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK_EXTENSION 0x2000ae03UL
#define CREATE_VM 0x2000ae01UL
#define API_VERSION 0x2000ae00UL

static int vm, n;
static volatile int bad, calls;

static void *parent_loop(void *unused)
{
	(void)unused;
	for (int i = 0; i < n; i++) {
		int r = ioctl(vm, CHECK_EXTENSION, 250);
		__atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
		if (r != 1)
			__atomic_add_fetch(&bad, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

static int dev_of_child;

static void *child_loop(void *unused)
{
	(void)unused;
	for (int i = 0; i < n; i++) {
		int r = ioctl(dev_of_child, API_VERSION, 0);
		__atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
		if (r != 12)
			__atomic_add_fetch(&bad, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

static void two_threads(void *(*loop)(void *))
{
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, loop, NULL);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
}

static int child(void)
{
	errno = 0;
	int inherited = ioctl(vm, CHECK_EXTENSION, 250);
	if (inherited != 1)
		return 2;
	dev_of_child = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (dev_of_child < 0)
		return 3;
	calls = bad = 0;
	two_threads(child_loop);
	return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "fork";
	n = argc > 2 ? atoi(argv[2]) : 1000;
	int dev = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	vm = dev >= 0 ? ioctl(dev, CREATE_VM, 0) : -1;
	if (vm < 0) {
		printf("bad setup: %s\n", strerror(errno));
		return 1;
	}
	pid_t pid;
	if (!strncmp(mode, "vfork", 5)) {
		pid = vfork();
		if (pid == 0) {
			if (!strcmp(mode, "vfork-closefrom"))
				closefrom(3);
			else if (!strcmp(mode, "vfork-loop"))
				for (int fd = 3; fd < 1024; fd++)
					close(fd);
			else {
				syscall(SYS_close_range, 3, ~0u, 0); /* what a spawn's close_fds does, raw */
				close_range(3, ~0u, 0);              /* and through libc (the shim sees this one) */
			}
			_exit(0);
		}
	} else if (!strcmp(mode, "rawfork"))
		pid = (pid_t)syscall(SYS_fork);
	else if (!strcmp(mode, "clone"))
		pid = (pid_t)syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
	else
		pid = fork();
	if (pid == 0)
		_exit(child());
	two_threads(parent_loop);
	int status;
	waitpid(pid, &status, 0);
	int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	if (ioctl(vm, CHECK_EXTENSION, 250) != 1) /* the parent's files survived the child */
		bad++;
	if (bad || code) {
		printf("bad calls=%d crossed=%d child=%d\n", calls, bad, code);
		return 1;
	}
	printf("ok calls=%d crossed=0\n", calls);
	return 0;
}
