/* namei.c: which file a path names, as the kernel walks it.
 *
 * The simulated host's files: $KVMSIM_ROOT holds /proc/device-tree, /proc/cpuinfo and
 * /sys/module/kvm* as the simulated kernel shows them (kvmsim.kernel.hostfs); /dev/kvm exists when
 * $KVMSIM_DEV_KVM is 1.
 *
 * A path is looked up as fs/namei.c walks it: component by component from the
 * directory it starts in, each symlink's target spliced in where it was met (so `..` after
 * a symlinked directory climbs from where the link led, not from its text), `..` at the
 * root staying there.  The real directories are opened O_PATH on the way; where one is this
 * machine's /dev, /proc or /sys/module (by identity, not by name), the next component decides:
 * kvm under /dev is the simulated device, cpuinfo or device-tree under /proc and kvm* under
 * /sys/module are the host's copies under $KVMSIM_ROOT.
 *
 * Only a path with such a name in it is walked at all (the cheap test, no system call); the
 * walk's buffers are one mmap'd scratch area, so an intercepted call needs well under 1 KiB
 * of stack (a signal handler on an 8 KiB sigaltstack may open a file).  A name that says
 * none of those can reach the simulated device only through a symlink: open() learns that
 * from the real kernel's answer (a character device 10:232), and the stat family does not
 * (docs/design.md "Choices"). */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>


#define SCRATCH (3 * PATH_MAX) /* the viewed path, the rest of the walk, a symlink's target */
#define MAX_LINKS 40           /* the kernel's MAXSYMLINKS */

struct dir_id {
	dev_t dev;
	ino_t ino;
};
static struct dir_id dev_dir, proc_dir, module_dir; /* this machine's, taken at init */

SHIM_INTERNAL void namei_init(void)
{
	struct stat st;
	struct {
		const char *path;
		struct dir_id *id;
	} dirs[] = {{"/dev", &dev_dir}, {"/proc", &proc_dir}, {"/sys/module", &module_dir}};
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++)
		if (real.fstatat(AT_FDCWD, dirs[i].path, &st, 0) == 0)
			*dirs[i].id = (struct dir_id){st.st_dev, st.st_ino};
}

static int same_dir(const struct stat *st, const struct dir_id *id)
{
	return id->ino && st->st_dev == id->dev && st->st_ino == id->ino;
}

static int component_is(const char *p, size_t len, const char *name)
{
	return len == strlen(name) && !memcmp(p, name, len);
}

/* The cheap test: could path name a simulated file?  A component kvm, cpuinfo or
 * device-tree, or kvm* after module (or first, for a walk that starts in /sys/module). */
/* The next component of a path at *p (slashes skipped), its length in *len (0 at the end);
 * *p moves past it. */
static const char *next_component(const char **p, size_t *len)
{
	while (**p == '/')
		(*p)++;
	const char *start = *p;
	while (**p && **p != '/')
		(*p)++;
	*len = (size_t)(*p - start);
	return start;
}

static int hinted(const char *path)
{
	const char *p = path, *prev = NULL;
	size_t len, prev_len = 0;
	for (const char *c = next_component(&p, &len); len; c = next_component(&p, &len)) {
		if (component_is(c, len, "kvm") || component_is(c, len, "cpuinfo") || component_is(c, len, "device-tree"))
			return 1;
		if (len >= 3 && !memcmp(c, "kvm", 3) &&
		    ((prev && component_is(prev, prev_len, "module")) || (!prev && path[0] != '/')))
			return 1;
		prev = c;
		prev_len = len;
	}
	return 0;
}

/* Does tail (a simulated entry and what follows it: "device-tree/cpus/..") stay beneath its
 * entry?  A ".." that climbs out of it leaves the host's files: the program's own path (the
 * host tree holds no symlink, so the text decides; the supervisor's _beneath()). */
static int beneath(const char *tail)
{
	long depth = 0;
	const char *p = tail;
	size_t len;
	for (const char *c = next_component(&p, &len); len; c = next_component(&p, &len)) {
		if (component_is(c, len, "."))
			continue;
		depth += component_is(c, len, "..") ? -1 : 1;
		if (depth <= 0)
			return 0;
	}
	return 1;
}

/* Write root + prefix + tail into out; 0 when it fits. */
static int viewed_path(char *out, const char *prefix, const char *tail)
{
	int w = snprintf(out, PATH_MAX, "%s%s%s", cfg.root, prefix, tail);
	return w > 0 && w < PATH_MAX ? 0 : -1;
}

/* Walk path from dirfd (see above); scratch is SCRATCH bytes.  PATH_REAL where the path
 * is this machine's, or where the walk itself fails (the real call then says why). */
static int walk(int dirfd, const char *path, int follow, char *scratch)
{
	char *out = scratch, *rest = scratch + PATH_MAX, *link = scratch + 2 * PATH_MAX;
	size_t n = strlen(path);
	if (n >= PATH_MAX)
		return PATH_REAL;
	memcpy(rest, path, n + 1);
	int cur = real.openat(rest[0] == '/' ? AT_FDCWD : dirfd, rest[0] == '/' ? "/" : ".",
	                      O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (cur < 0)
		return PATH_REAL;
	int kind = PATH_REAL, links = 0, at_root = rest[0] == '/';
	char *p = rest;
	for (;;) {
		while (*p == '/')
			p++;
		if (!*p)
			break;
		char *end = p;
		while (*end && *end != '/')
			end++;
		size_t len = (size_t)(end - p);
		char *next = end;
		while (*next == '/')
			next++;
		int last = !*next;
		/* A directory just below the root is opened by its absolute name, as the real call
		 * would name it: the same directory natively, and under qemu-user with a sysroot
		 * (-L) the one its path translation picks (the sysroot's /usr, this machine's /proc),
		 * where walking from "/" would start inside the sysroot and miss /proc. */
		if (at_root && !last && len <= NAME_MAX && !component_is(p, len, ".") && !component_is(p, len, "..")) {
			char top[NAME_MAX + 2];
			top[0] = '/';
			memcpy(top + 1, p, len);
			top[len + 1] = 0;
			at_root = 0;
			int sub = real.openat(AT_FDCWD, top, O_PATH | O_DIRECTORY | O_CLOEXEC);
			if (sub >= 0) {
				real.close(cur);
				cur = sub;
				p = next;
				continue;
			}
		}
		if (!component_is(p, len, ".") && !component_is(p, len, ".."))
			at_root = 0;
		struct stat st;
		if (real.fstat(cur, &st) < 0)
			break;
		if (same_dir(&st, &dev_dir) && component_is(p, len, "kvm")) {
			if (last && *end == '/') { /* "/dev/kvm/": a device is no directory */
				strcpy(out, "/dev/null/"); /* the real kernel's ENOTDIR (EISDIR with O_CREAT) */
				kind = PATH_VIEW;
			} else
				kind = last ? PATH_DEV_KVM : PATH_REAL;
			break;
		}
		if (cfg.root && ((same_dir(&st, &proc_dir) && (component_is(p, len, "cpuinfo") ||
		                                                 component_is(p, len, "device-tree"))) ||
		                  (same_dir(&st, &module_dir) && len >= 3 && !memcmp(p, "kvm", 3)))) {
			if (beneath(p) && viewed_path(out, same_dir(&st, &proc_dir) ? "/proc/" : "/sys/module/", p) == 0)
				kind = PATH_VIEW;
			break;
		}
		if ((last && !follow) || len > NAME_MAX)
			break;
		char name[NAME_MAX + 1];
		memcpy(name, p, len);
		name[len] = 0;
		if (real.fstatat(cur, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			break;
		if (S_ISLNK(st.st_mode)) { /* splice the target in front of what is left */
			ssize_t t = readlinkat(cur, name, link, PATH_MAX - 1);
			size_t left = strlen(next);
			if (++links > MAX_LINKS || t <= 0 || (size_t)t + 1 + left >= PATH_MAX)
				break;
			if (left) {
				memmove(rest + t + 1, next, left + 1);
				rest[t] = '/';
			} else
				rest[t] = 0;
			memcpy(rest, link, (size_t)t);
			p = rest;
			if (link[0] == '/') {
				int root = real.openat(AT_FDCWD, "/", O_PATH | O_DIRECTORY | O_CLOEXEC);
				if (root < 0)
					break;
				real.close(cur);
				cur = root;
				at_root = 1;
			}
			continue;
		}
		if (last || !S_ISDIR(st.st_mode))
			break;
		int sub = real.openat(cur, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (sub < 0)
			break;
		real.close(cur);
		cur = sub;
		p = next;
	}
	real.close(cur);
	return kind;
}

/* What path (from dirfd) names: this machine's file, the simulated /dev/kvm, or the host's
 * copy (l->buf).  Release with lookup_done(). */
SHIM_INTERNAL int lookup(int dirfd, const char *path, int follow, struct lookup *l)
{
	l->kind = PATH_REAL;
	l->buf = NULL;
	if (!path || !*path || !hinted(path))
		return PATH_REAL;
	if (!strcmp(path, "/dev/kvm"))
		return l->kind = PATH_DEV_KVM;
	void *scratch = sys_mmap(NULL, SCRATCH, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (scratch == MAP_FAILED)
		return PATH_REAL;
	l->buf = scratch;
	return l->kind = walk(dirfd, path, follow, scratch);
}

SHIM_INTERNAL void lookup_done(struct lookup *l)
{
	if (l->buf) {
		int e = errno;
		munmap(l->buf, SCRATCH);
		errno = e;
		l->buf = NULL;
	}
}

/* The path the real call is given: the host's copy, or the program's own. */
SHIM_INTERNAL const char *real_path(const struct lookup *l, const char *path)
{
	return l->kind == PATH_VIEW ? l->buf : path;
}

