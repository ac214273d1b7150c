// gokvm: a Go program that asks the KVM device itself, with no libc (os.OpenFile, and
// syscall.Syscall(SYS_IOCTL, ...) for every request), as tests/test_seccomp.py gives them:
//
//	gokvm API CREATE_VM CHECK_EXTENSION CAP COMPAT_CAPS
//
// COMPAT_CAPS 0 skips the struct request.  Prints one JSON object: each answer, or its errno,
// the struct's 24 bytes after the call, and uname's machine.
package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"unsafe"
)

type answer struct {
	Value int64  `json:"value"`
	Errno string `json:"errno,omitempty"`
}

func ioctl(fd uintptr, req uint64, arg uintptr) answer {
	r, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, uintptr(req), arg)
	if e != 0 {
		return answer{-1, e.Error()}
	}
	return answer{int64(r), ""}
}

func number(s string) uint64 {
	n, err := strconv.ParseUint(s, 0, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gokvm:", err)
		os.Exit(2)
	}
	return n
}

func main() {
	if len(os.Args) != 6 {
		fmt.Fprintln(os.Stderr, "usage: gokvm API CREATE_VM CHECK_EXTENSION CAP COMPAT_CAPS")
		os.Exit(2)
	}
	api, create, check, capnr, compat := number(os.Args[1]), number(os.Args[2]), number(os.Args[3]),
		number(os.Args[4]), number(os.Args[5])
	out := map[string]interface{}{}
	var uts syscall.Utsname
	if err := syscall.Uname(&uts); err == nil {
		machine := make([]byte, 0, len(uts.Machine))
		for _, c := range uts.Machine {
			if c == 0 {
				break
			}
			machine = append(machine, byte(c))
		}
		out["machine"] = string(machine)
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		out["open"] = err.(*os.PathError).Err.Error()
	} else {
		dev := f.Fd()
		out["api"] = ioctl(dev, api, 0)
		vm := ioctl(dev, create, 0)
		out["create_vm"] = vm
		if vm.Errno == "" {
			out["cap"] = ioctl(uintptr(vm.Value), check, uintptr(capnr))
			if compat != 0 {
				buf := make([]byte, 24)
				*(*uint64)(unsafe.Pointer(&buf[0])) = 24
				out["compat_caps"] = ioctl(uintptr(vm.Value), compat, uintptr(unsafe.Pointer(&buf[0])))
				out["struct"] = hex.EncodeToString(buf)
			}
		}
	}
	text, _ := json.Marshal(out)
	fmt.Println(string(text))
}
