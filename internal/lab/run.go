package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrDomainFailed is wrapped by Run's error when a domain did not finish its job.
var ErrDomainFailed = errors.New("domain failed")

// RunOptions configure one boot.
type RunOptions struct {
	Out        string        // run directory (shared with dom0 as /lab)
	Timeout    time.Duration // whole boot; QEMU is killed after it
	Dom0Script string        // shell script run in dom0
	Files      map[string]string // extra files (name -> host path) copied into Out
	Echo       io.Writer     // if set, the serial console is copied here too
}

// Result is what a run left behind.
type Result struct {
	Out      string
	ExitCode int // dom0 script's exit code
	Elapsed  time.Duration
}

// Run boots Xen and dom0 with a, runs opts.Dom0Script in dom0 and returns
// its exit code. The run directory holds serial.log, console/guest-*.log,
// dom0.log and exit-code.
func Run(ctx context.Context, a *Artifacts, opts RunOptions, p *Progress) (*Result, error) {
	if p == nil {
		p = NewProgress(nil)
	}
	out, err := filepath.Abs(opts.Out)
	if err != nil {
		return nil, fmt.Errorf("lab: run dir: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(out, "console"), 0o755); err != nil {
		return nil, fmt.Errorf("lab: run dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(out, "dom0.sh"), []byte(opts.Dom0Script), 0o755); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	for name, src := range opts.Files {
		if err := copyFile(src, filepath.Join(out, name)); err != nil {
			return nil, fmt.Errorf("lab: %w", err)
		}
	}
	os.Remove(filepath.Join(out, "exit-code"))
	disk := filepath.Join(out, "nvme.img")
	if err := os.Truncate(disk, 1<<30); err != nil {
		f, cerr := os.Create(disk)
		if cerr != nil {
			return nil, fmt.Errorf("lab: nvme image: %w", cerr)
		}
		f.Close()
		if err := os.Truncate(disk, 1<<30); err != nil {
			return nil, fmt.Errorf("lab: nvme image: %w", err)
		}
	}
	q := QEMUConfig{Xen: a.Xen, Vmlinuz: a.Vmlinuz, Initrd: a.Dom0Initrd, NVMeImage: disk, ShareDir: out}
	args := q.Args()
	if err := os.WriteFile(filepath.Join(out, "qemu.cmdline"), []byte("qemu-system-x86_64 "+strings.Join(args, " ")+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	serial, err := os.Create(filepath.Join(out, "serial.log"))
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	defer serial.Close()

	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Dir = out
	cmd.Stdin = nil
	var w io.Writer = serial
	if opts.Echo != nil {
		w = io.MultiWriter(serial, opts.Echo)
	}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second

	start := time.Now()
	done := p.Step(fmt.Sprintf("boot Xen + dom0, run %s (timeout %s)", filepath.Join(out, "dom0.sh"), opts.Timeout), 90*time.Second)
	runErr := cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // anything QEMU left in its group
	}
	res := &Result{Out: out, ExitCode: -1, Elapsed: time.Since(start)}
	code, codeErr := readExitCode(filepath.Join(out, "exit-code"))
	if codeErr != nil {
		err := fmt.Errorf("lab: dom0 did not finish its script (qemu: %v, context: %v): %w", runErr, ctx.Err(), ErrDomainFailed)
		done(err)
		return res, err
	}
	res.ExitCode = code
	done(nil)
	return res, nil
}

func readExitCode(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("exit code: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("exit code %q: %w", b, err)
	}
	return n, nil
}

// Tail returns the last n lines of a file (for failure reports).
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
