"""The kernel side: what runs behind the system call, in the kernel's own file names.

``uapi`` (numbers and layouts), ``usermem`` (a process's address space: get_user,
copy_struct_from_user, ...), ``profile`` (the machine), ``papr`` (the hypervisor below),
``book3s_hv`` / ``book3s_pr`` (module init and the backends), ``powerpc`` and ``x86``
(``kvm_arch_*``), ``kvm_main`` (files, fds, ``sys_ioctl``), ``hostfs`` (the files the
kernel shows: /proc/device-tree, /proc/cpuinfo, /sys/module).  Nothing here imports a
module outside this folder."""
