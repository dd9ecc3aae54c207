package logging_test

import (
	"os"
	"strconv"
	"syscall"
	"testing"
	"unsafe"

	"github.com/eventbus-suite/eventbus/pkg/logging"
)

// openPTY opens a pseudo-terminal and returns its terminal side.
func openPTY(t *testing.T) *os.File {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	t.Cleanup(func() { ptmx.Close() })
	var unlock int32
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, ptmx.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); errno != 0 {
		t.Fatalf("unlock the pty: %v", errno)
	}
	var n uint32
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, ptmx.Fd(), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); errno != 0 {
		t.Fatalf("number the pty: %v", errno)
	}
	tty, err := os.OpenFile("/dev/pts/"+strconv.FormatUint(uint64(n), 10), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open the pty: %v", err)
	}
	t.Cleanup(func() { tty.Close() })
	return tty
}

func TestAutoIsTextOnATerminal(t *testing.T) {
	t.Parallel()
	tty := openPTY(t)
	if !logging.IsTerminal(tty) {
		t.Fatal("IsTerminal(a pty) = false")
	}
	if got := logging.Auto.For(tty); got != logging.Text {
		t.Errorf("Auto.For(a pty) = %q, want text", got)
	}
	if got := logging.JSON.For(tty); got != logging.JSON {
		t.Errorf("JSON.For(a pty) = %q, want json: LOG_FORMAT=json wins", got)
	}
}
