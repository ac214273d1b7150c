/*
 * Programs that treat /dev/kvm the way real programs do, for tests/test_shim_torture.py:
 *   signals     a SIGALRM handler dup()s and close()s an emulated fd while the main thread
 *               is inside emulated ioctls (the shim's lock must not deadlock)
 *   closerange  close_range()/closefrom() and a close loop over every fd, then /dev/kvm again
 *   threads N   N threads issuing KVM_PPC_GET_COMPAT_CAPS, every answer checked
 * Prints one line "ok ..." or "bad ..." and exits 0 / 1.
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
#include <sys/time.h>
#include <unistd.h>

#define CHECK_EXTENSION 0x2000ae03UL
#define CREATE_VM 0x2000ae01UL
#define API_VERSION 0x2000ae00UL
#define COMPAT_CAPS 0x2000aeb8UL /* Linux 7.3 */
#define EXPECTED 0x3000000000000000ULL /* powervm-p11 */

static int dev, vm;
static volatile sig_atomic_t handled;

static void on_alarm(int sig)
{
	(void)sig;
	int fd = dup(vm);
	if (fd >= 0)
		close(fd);
	handled++;
}

static int signals(void)
{
	struct sigaction sa = {.sa_handler = on_alarm};
	sigaction(SIGALRM, &sa, NULL);
	struct itimerval t = {{0, 200}, {0, 200}};
	setitimer(ITIMER_REAL, &t, NULL);
	for (int i = 0; i < 20000; i++)
		if (ioctl(vm, CHECK_EXTENSION, 250) != 1 && errno != EINTR) {
			printf("bad check_extension %d\n", i);
			return 1;
		}
	struct itimerval off = {{0, 0}, {0, 0}};
	setitimer(ITIMER_REAL, &off, NULL);
	printf("ok signals handled=%d\n", (int)handled);
	return 0;
}

static int closerange(void)
{
	close_range(3, ~0U, 0);
	if (ioctl(vm, API_VERSION, 0) != -1 || errno != EBADF) { /* the emulated fd went too */
		printf("bad: the VM fd survived close_range (%d)\n", errno);
		return 1;
	}
	closefrom(3);
	for (int fd = 3; fd < 1024; fd++)
		close(fd);
	int again = open("/dev/kvm", O_RDWR);
	if (again < 0 || ioctl(again, API_VERSION, 0) != 12) {
		printf("bad: /dev/kvm after closing everything: %s\n", strerror(errno));
		return 1;
	}
	printf("ok closerange\n");
	return 0;
}

static void *worker(void *arg)
{
	long bad = 0;
	for (int i = 0; i < 2000; i++) {
		uint64_t caps[3] = {24, 0, 0}; /* size, flags, compat_capabilities (little-endian) */
		if (ioctl(vm, COMPAT_CAPS, caps) != 0 || caps[0] != 24 || caps[2] != EXPECTED)
			bad++;
	}
	*(long *)arg = bad;
	return NULL;
}

static int threads(int n)
{
	pthread_t t[16];
	long bad[16] = {0}, total = 0;
	for (int i = 0; i < n; i++)
		pthread_create(&t[i], NULL, worker, &bad[i]);
	for (int i = 0; i < n; i++) {
		pthread_join(t[i], NULL);
		total += bad[i];
	}
	printf("%s threads=%d calls=%d wrong=%ld\n", total ? "bad" : "ok", n, n * 2000, total);
	return total != 0;
}

int main(int argc, char **argv)
{
	dev = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	vm = dev < 0 ? -1 : ioctl(dev, CREATE_VM, 0);
	if (vm < 0) {
		printf("bad: no VM (%s)\n", strerror(errno));
		return 1;
	}
	if (argc > 1 && !strcmp(argv[1], "signals"))
		return signals();
	if (argc > 1 && !strcmp(argv[1], "closerange"))
		return closerange();
	if (argc > 2 && !strcmp(argv[1], "threads"))
		return threads(atoi(argv[2]) > 16 ? 16 : atoi(argv[2]));
	return 2;
}
