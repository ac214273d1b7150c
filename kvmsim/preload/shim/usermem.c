/* usermem.c: this process's memory, read and written for the server's copy_from_user and
 * copy_to_user.  Only inside the argument window of the ioctl in progress,
 * [arg, arg + MAX_USER_COPY) — KVM_PPC_GET_COMPAT_CAPS reads at most PAGE_SIZE (64K on
 * POWER) — and, for KVM_GET/SET_ONE_REG, the value its struct points at (ONE_REG_VALUE
 * bytes: the program named it), never elsewhere in this process.  A bad address is EFAULT, never a crash:
 * process_vm_readv/writev on our own pid, or a pipe where those are missing (qemu-user) or
 * $KVMSIM_MEMORY=pipe asks for it (the pipe is the call's own, made on first use). */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

static int vm_calls_fail; /* process_vm_* answered ENOSYS or EPERM once: the pipe from then on */

/* The top of this thread's stack, found once a thread (outside the shim's lock: for the main
 * thread glibc reads /proc/self/maps).  0 where it cannot be known. */
static __thread uintptr_t stack_low, stack_top;
static __thread int stack_looked;

SHIM_INTERNAL void usermem_find_stack(void)
{
	pthread_attr_t attr;
	void *low;
	size_t size;
	if (stack_looked)
		return;
	stack_looked = 1;
	if (pthread_getattr_np(pthread_self(), &attr) != 0)
		return;
	if (pthread_attr_getstack(&attr, &low, &size) == 0) {
		stack_low = (uintptr_t)low;
		stack_top = (uintptr_t)low + size;
	}
	pthread_attr_destroy(&attr);
}

/* How many bytes from addr are in the live part of this thread's stack (from this frame up to
 * its top): mapped and writable, so touching them needs no system call and cannot fault.  The
 * argument of an ioctl is usually there (QEMU's struct, CPython's ioctl buffer).  Only while
 * this frame is on that stack: on a signal stack or a coroutine's, [here, top) may span holes. */
static size_t live_stack_room(uint64_t addr)
{
	uintptr_t here = (uintptr_t)__builtin_frame_address(0);
	if (!stack_top || here < stack_low || here >= stack_top)
		return 0;
	return addr >= here && addr < stack_top ? (size_t)(stack_top - addr) : 0;
}

SHIM_INTERNAL void usermem_begin(struct usermem *m, uint64_t base, int span)
{
	m->base = base;
	m->span = span;
	m->inner = 0;
	m->pipe[0] = m->pipe[1] = -1;
}

SHIM_INTERNAL void usermem_end(struct usermem *m)
{
	for (int i = 0; i < 2; i++)
		if (m->pipe[i] >= 0)
			real.close(m->pipe[i]);
	m->pipe[0] = m->pipe[1] = -1;
	m->span = 0;
}

/* Is [addr, addr + n) inside a window of at most size bytes from base?  (No overflow.) */
static int within(uint64_t base, uint64_t size, uint64_t addr, uint64_t n)
{
	if (addr < base)
		return 0;
	uint64_t off = addr - base;
	return off <= size && n <= size - off;
}

/* Is [addr, addr + n) inside the argument's window, or the value a kvm_one_reg points at? */
static int in_span(const struct usermem *m, uint64_t addr, uint64_t n)
{
	if (!m->span)
		return 0;
	return within(m->base, MAX_USER_COPY, addr, n) || (m->inner && within(m->inner, ONE_REG_VALUE, addr, n));
}

static int use_pipe(void)
{
	return cfg.memory_pipe || __atomic_load_n(&vm_calls_fail, __ATOMIC_RELAXED);
}

static void vm_calls_failed(void)
{
	__atomic_store_n(&vm_calls_fail, 1, __ATOMIC_RELAXED);
}

static int pipe_ready(struct usermem *m)
{
	return m->pipe[0] >= 0 || pipe2(m->pipe, O_CLOEXEC | O_NONBLOCK) == 0;
}

static void pipe_drain(struct usermem *m)
{
	char junk[256];
	while (real.read(m->pipe[0], junk, sizeof(junk)) > 0)
		;
}

/* Copy n bytes through the pipe: from src into it (the kernel checks src), out into dst.
 * How many arrived in dst; *fault when src stopped short. */
static size_t through_pipe(struct usermem *m, void *dst, const void *src, size_t n)
{
	if (!pipe_ready(m))
		return 0;
	ssize_t w = real.write(m->pipe[1], src, n); /* stops at a fault */
	if (w <= 0) {
		pipe_drain(m);
		return 0;
	}
	ssize_t r = real.read(m->pipe[0], dst, (size_t)w); /* a fault in dst: short or -1 */
	pipe_drain(m);
	return r > 0 ? (size_t)r : 0;
}

/* How many bytes from addr are readable, up to n, copied into buf (0 when none are): the
 * IOCTL's read-ahead, which need not lie in any window (it is only offered). */
SHIM_INTERNAL size_t usermem_read_ahead(struct usermem *m, uint64_t addr, void *buf, size_t n)
{
	if (addr < 4096) /* not a pointer, or NULL: nothing to read ahead */
		return 0;
	size_t room = live_stack_room(addr);
	if (room) {
		n = room < n ? room : n;
		memcpy(buf, (const void *)(uintptr_t)addr, n);
		return n;
	}
	if (!use_pipe()) {
		struct iovec local = {buf, n}, remote = {(void *)(uintptr_t)addr, n};
		ssize_t r = process_vm_readv(self_pid(), &local, 1, &remote, 1, 0);
		if (r >= 0)
			return (size_t)r; /* stops at the first unreadable page */
		if (errno == EFAULT)
			return 0;
		vm_calls_failed(); /* ENOSYS (qemu-user), EPERM (no ptrace permission) */
	}
	return through_pipe(m, buf, (const void *)(uintptr_t)addr, n);
}

/* copy_from_user for the server: 0, or EFAULT (outside the window, or unmapped). */
SHIM_INTERNAL int usermem_read(struct usermem *m, uint64_t addr, void *buf, size_t n)
{
	if (!in_span(m, addr, n))
		return EFAULT;
	if (live_stack_room(addr) >= n) {
		memcpy(buf, (const void *)(uintptr_t)addr, n);
		return 0;
	}
	if (!use_pipe()) {
		struct iovec local = {buf, n}, remote = {(void *)(uintptr_t)addr, n};
		ssize_t r = process_vm_readv(self_pid(), &local, 1, &remote, 1, 0);
		if (r == (ssize_t)n)
			return 0;
		if (r >= 0 || errno == EFAULT)
			return EFAULT;
		vm_calls_failed();
	}
	if (!pipe_ready(m))
		return EIO;
	return through_pipe(m, buf, (const void *)(uintptr_t)addr, n) == n ? 0 : EFAULT;
}

/* copy_to_user for the server: 0, or EFAULT with *done the bytes written before the fault. */
SHIM_INTERNAL int usermem_write(struct usermem *m, uint64_t addr, const void *buf, size_t n, uint32_t *done)
{
	*done = 0;
	if (!in_span(m, addr, n))
		return EFAULT;
	if (live_stack_room(addr) >= n) {
		memcpy((void *)(uintptr_t)addr, buf, n);
		*done = (uint32_t)n;
		return 0;
	}
	if (!use_pipe()) {
		struct iovec local = {(void *)buf, n}, remote = {(void *)(uintptr_t)addr, n};
		ssize_t r = process_vm_writev(self_pid(), &local, 1, &remote, 1, 0);
		if (r == (ssize_t)n) {
			*done = (uint32_t)n;
			return 0;
		}
		if (r >= 0 || errno == EFAULT) {
			*done = r > 0 ? (uint32_t)r : 0;
			return EFAULT;
		}
		vm_calls_failed();
	}
	if (!pipe_ready(m))
		return EIO;
	size_t got = through_pipe(m, (void *)(uintptr_t)addr, buf, n);
	*done = (uint32_t)got;
	return got == n ? 0 : EFAULT;
}
