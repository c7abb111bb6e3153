package redistest

import "syscall"

// procAttr kills redis-server when the test binary dies without running its
// cleanups (a test timeout panic, kill -9), so no server outlives its test.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
