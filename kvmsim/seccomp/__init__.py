"""The edge that reaches programs below libc: ``kvmsim run --intercept seccomp``.

``launch`` starts the program under a seccomp filter (``bpf``) whose user-notification
listener it hands back; ``supervisor`` answers the notified system calls from the simulated
kernel, with placeholders the real kernel tracks, paths walked by ``namei``, the task's
memory through ``taskmem`` and stat answers from ``kstat``; ``uapi`` is seccomp's and
x86_64's numbers and layouts."""
