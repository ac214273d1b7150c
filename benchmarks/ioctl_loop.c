/*
 * ioctl_loop: one ioctl, many times, every answer checked; prints the mean ns a call.
 * What `make bench` runs under the preload shim and under umockdev, side by side.
 *
 *   ioctl_loop check N REQUEST ARG EXPECT   ioctl(/dev/kvm fd, REQUEST, ARG) must return EXPECT
 *   ioctl_loop caps N CREATE_VM CAPS        create a VM, then the 24-byte compat caps ioctl
 *                                           (size 24, flags 0) must return 0 each time
 *   ioctl_loop open N PATH                  open(PATH) and close it: an ordinary file's cost
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: ioctl_loop check N REQUEST ARG EXPECT | caps N CREATE_VM CAPS | open N PATH\n");
		return 2;
	}
	long n = strtol(argv[2], NULL, 0);
	double start;
	if (!strcmp(argv[1], "open")) {
		start = now_ns();
		for (long i = 0; i < n; i++) {
			int f = open(argv[3], O_RDONLY | O_CLOEXEC);
			if (f < 0) {
				perror("ioctl_loop: open");
				return 1;
			}
			close(f);
		}
		printf("%.1f\n", (now_ns() - start) / (double)n);
		return 0;
	}
	unsigned long request = strtoul(argv[3], NULL, 0);
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		perror("ioctl_loop: /dev/kvm");
		return 1;
	}
	if (!strcmp(argv[1], "check") && argc == 6) {
		unsigned long arg = strtoul(argv[4], NULL, 0);
		long expect = strtol(argv[5], NULL, 0);
		start = now_ns();
		for (long i = 0; i < n; i++) {
			int r = ioctl(fd, request, arg);
			if (r != expect) {
				fprintf(stderr, "ioctl_loop: call %ld returned %d (errno %d), not %ld\n", i, r, errno, expect);
				return 1;
			}
		}
	} else if (!strcmp(argv[1], "caps") && argc == 5) {
		unsigned long caps = strtoul(argv[4], NULL, 0);
		int vm = ioctl(fd, request, 0);
		uint64_t buf[3];
		if (vm < 0) {
			perror("ioctl_loop: KVM_CREATE_VM");
			return 1;
		}
		start = now_ns();
		for (long i = 0; i < n; i++) {
			buf[0] = 24, buf[1] = 0, buf[2] = 0;
			if (ioctl(vm, caps, buf) != 0) {
				fprintf(stderr, "ioctl_loop: call %ld failed: errno %d\n", i, errno);
				return 1;
			}
		}
	} else {
		fprintf(stderr, "ioctl_loop: unknown mode %s\n", argv[1]);
		return 2;
	}
	printf("%.1f\n", (now_ns() - start) / (double)n);
	return 0;
}
