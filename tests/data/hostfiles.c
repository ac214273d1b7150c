/* hostfiles: what a program sees of the host, by system calls a static binary makes itself:
 * access/stat of /dev/kvm, /proc/cpuinfo's first line, the /proc/device-tree/cpus listing,
 * uname's machine, and /proc/self/fd's links of an open /dev/kvm and a VM fd.  One line each. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <unistd.h>

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
	unsigned long create_vm = argc > 1 ? strtoul(argv[1], NULL, 0) : 0x2000ae01UL;
	struct utsname u;
	uname(&u);
	printf("machine %s\n", u.machine);
	printf("access %d\n", access("/dev/kvm", R_OK | W_OK) == 0);
	struct stat st;
	if (stat("/dev/kvm", &st) == 0)
		printf("stat %s %u:%u %o\n", S_ISCHR(st.st_mode) ? "chr" : "other", major(st.st_rdev), minor(st.st_rdev),
		       st.st_mode & 0777);
	else
		printf("stat -1\n");
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[256] = "";
	if (f && fgets(line, sizeof(line), f))
		printf("cpuinfo %s", line);
	if (f)
		fclose(f);
	DIR *d = opendir("/proc/device-tree/cpus");
	char *names[64];
	int n = 0;
	for (struct dirent *e; d && n < 64 && (e = readdir(d));)
		if (e->d_name[0] != '.')
			names[n++] = strdup(e->d_name);
	if (d)
		closedir(d);
	qsort(names, (size_t)n, sizeof(names[0]), by_name);
	printf("cpus");
	for (int i = 0; i < n; i++)
		printf(" %s", names[i]);
	printf("\n");
	int dev = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	int vm = dev >= 0 ? ioctl(dev, create_vm, 0) : -1;
	for (int i = 0; i < 2; i++) {
		int fd = i ? vm : dev;
		char path[64], link[256];
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		ssize_t len = fd >= 0 ? readlink(path, link, sizeof(link) - 1) : -1;
		link[len > 0 ? len : 0] = 0;
		printf("%s %s\n", i ? "vm-link" : "dev-link", len > 0 ? link : "-");
	}
	return 0;
}
