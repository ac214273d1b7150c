/* kvmsim_launch: the first half of `kvmsim run --intercept seccomp`.
 *
 *   kvmsim_launch FILTER_FD SOCK_FD PROGRAM ARG...
 *
 * Reads a classic-BPF seccomp filter (struct sock_filter[], at most BPF_MAXINSNS) from
 * FILTER_FD, sets no_new_privs (seccomp requires it of an unprivileged task, and it is what
 * keeps a setuid program from gaining privileges under a filter it did not choose), installs
 * the filter with a user-notification listener, hands the listener to the supervisor over the
 * Unix socket SOCK_FD (SCM_RIGHTS), and execs PROGRAM.  The filter then holds for PROGRAM and
 * every process it starts, and for nothing else.
 *
 * SOCK_FD is close-on-exec: the supervisor sees it close when the exec succeeded; when the
 * exec fails the errno is written to it first (as CPython's subprocess reports exec errors).
 * PROGRAM is looked up on $PATH as subprocess does: no /bin/sh for a file the kernel will not
 * execute (ENOEXEC is an error, as under the preload path), EACCES reported over ENOENT.
 * Exit 125 when the filter cannot be installed, with one line on stderr. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
#define SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (1UL << 5)
#endif

#define EXIT_CANNOT_RUN 125

static int fail(const char *what)
{
	fprintf(stderr, "kvmsim: error: seccomp launcher: %s: %s\n", what, strerror(errno));
	return EXIT_CANNOT_RUN;
}

static int send_fd(int sock, int fd)
{
	char byte = 0;
	struct iovec iov = {.iov_base = &byte, .iov_len = 1};
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control;
	memset(&control, 0, sizeof(control));
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
	                     .msg_controllen = sizeof(control.buf)};
	struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
	ssize_t r;
	do
		r = sendmsg(sock, &msg, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	return r == 1 ? 0 : -1;
}

/* execvp() without its /bin/sh fallback; the errno to report when nothing ran */
static int exec_path(const char *file, char **args)
{
	extern char **environ;
	if (strchr(file, '/')) {
		execve(file, args, environ);
		return errno;
	}
	const char *path = getenv("PATH");
	if (!path)
		path = "/usr/local/bin:/usr/bin:/bin";
	int err = ENOENT;
	for (const char *p = path;; p++) {
		const char *end = strchrnul(p, ':');
		char full[4096];
		int len = snprintf(full, sizeof(full), "%.*s%s%s", (int)(end - p), p, end > p ? "/" : "", file);
		if (len > 0 && (size_t)len < sizeof(full)) {
			execve(full, args, environ);
			if (errno == EACCES)
				err = EACCES;
			else if (errno != ENOENT && errno != ENOTDIR)
				return errno;
		}
		if (!*end)
			return err;
		p = end;
	}
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s FILTER_FD SOCK_FD PROGRAM [ARG...]\n", argv[0]);
		return 2;
	}
	int filter_fd = atoi(argv[1]), sock = atoi(argv[2]);
	static struct sock_filter insns[BPF_MAXINSNS];
	size_t got = 0;
	for (;;) {
		ssize_t r = read(filter_fd, (char *)insns + got, sizeof(insns) - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return fail("reading the filter");
		if (r == 0)
			break;
		got += (size_t)r;
	}
	close(filter_fd);
	if (got == 0 || got % sizeof(insns[0])) {
		errno = EINVAL;
		return fail("the filter is not whole instructions");
	}
	struct sock_fprog prog = {.len = (unsigned short)(got / sizeof(insns[0])), .filter = insns};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return fail("PR_SET_NO_NEW_PRIVS");
	long listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
	                        SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, &prog);
	if (listener < 0 && errno == EINVAL) /* before Linux 5.19 */
		listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
	if (listener < 0)
		return fail("installing the filter");
	if (send_fd(sock, (int)listener))
		return fail("handing the listener to the supervisor");
	close((int)listener);
	if (fcntl(sock, F_SETFD, FD_CLOEXEC))
		return fail("F_SETFD");
	int err = exec_path(argv[3], argv + 3);
	ssize_t w;
	do
		w = write(sock, &err, sizeof(err));
	while (w < 0 && errno == EINTR);
	return err == ENOENT ? 127 : 126;
}
