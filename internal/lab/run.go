package lab

import (
	"bufio"
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
	"sync"
	"syscall"
	"time"
)

// ErrDomainFailed is wrapped by Run's error when dom0 did not finish its script.
var ErrDomainFailed = errors.New("domain failed")

// RunOptions configure one boot.
type RunOptions struct {
	Out      string        // run directory (shared with dom0 as /lab), already Prepared
	Timeout  time.Duration // whole boot; QEMU is killed after it
	Echo     io.Writer     // if set, the serial console is copied here too
	DiskSize int64         // NVMe image size (default 1 GiB)
	// LabHeld says the caller holds the lab lock (HoldLab) across several
	// boots; Run then does not take it.
	LabHeld bool
}

// HoldLab takes the machine-wide lab lock for several boots in a row (e.g.
// `xenlab e2e --backend=both`: the figures it compares come from boots
// back to back); the returned function releases it.
func HoldLab(ctx context.Context, p *Progress) (func(), error) {
	if p == nil {
		p = NewProgress(nil)
	}
	return lockLab(ctx, p)
}

// Stamp is a host-side time of a dom0 "T" marker, since QEMU started.
type Stamp struct {
	Name string
	At   time.Duration
}

// Result is what a run left behind.
type Result struct {
	Out      string
	ExitCode int // dom0 script's exit code
	Elapsed  time.Duration
	Stamps   []Stamp // dom0's T markers as the host saw them on the serial console
}

// Run boots Xen and dom0 from a and the run directory, which dom0 mounts
// as /lab and runs /lab/init-dom0.sh from. The run directory then holds
// serial.log, console/guest-*.log, dom0.log and exit-code. QEMU runs in its
// own process group, which is killed on return whatever happened.
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
	os.Remove(filepath.Join(out, "exit-code"))
	size := opts.DiskSize
	if size == 0 {
		size = 1 << 30
	}
	disk := filepath.Join(out, "nvme.img")
	if err := sparseImage(disk, size); err != nil {
		return nil, err
	}
	// Namespace 2 (4096-byte sectors) starts empty every boot: the e2e
	// guest tells its first boot from a reboot by what it finds there.
	disk4k := filepath.Join(out, NVMe4KImageName)
	os.Remove(disk4k)
	if err := sparseImage(disk4k, NVMe4KSize); err != nil {
		return nil, err
	}
	q := QEMUConfig{Xen: a.Xen, Vmlinuz: a.Vmlinuz, Initrd: a.Initrd, NVMeImage: disk, NVMe4KImage: disk4k, ShareDir: out}
	args, err := q.Args()
	if err != nil {
		return nil, err
	}
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
	if !opts.LabHeld {
		unlock, err := lockLab(ctx, p)
		if err != nil {
			return nil, err
		}
		defer unlock()
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Dir = out
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = pw, pw
	// Its own session (and so its own process group, for the kill below)
	// gives QEMU its own scheduler autogroup, raised after the start.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second

	start := time.Now()
	res := &Result{Out: out, ExitCode: -1}
	done := p.Step(fmt.Sprintf("boot Xen + dom0, run %s (timeout %s)", filepath.Join(out, "dom0.sh"), opts.Timeout), 120*time.Second)
	if err := cmd.Start(); err != nil {
		pw.Close()
		pr.Close()
		done(err)
		return nil, fmt.Errorf("lab: qemu: %w", err)
	}
	pw.Close()
	if err := raiseAutogroup(cmd.Process.Pid, qemuAutogroupNice); err != nil {
		p.Printf("QEMU keeps a default scheduler share: %v", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // owned by Run: ends when QEMU's output pipe closes
		defer wg.Done()
		res.Stamps = copySerial(pr, serial, opts.Echo, start, p)
	}()
	runErr := cmd.Wait()
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // anything QEMU left in its group
	pr.Close()
	wg.Wait()
	res.Elapsed = time.Since(start)
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

// qemuAutogroupNice is the nice value of QEMU's scheduler autogroup. With
// autogroups (the default of Debian's kernel) the kernel shares the CPUs
// between sessions first and applies nice only inside one, so a CPU-heavy
// job started from another terminal (a race-built test run, a compile)
// took half the host from the lab whatever its nice; under that the
// emulated machines ran 5 to 9 times slower, and time-sensitive guests
// (Xen's watchdog, TCP) misbehaved. -10 weighs QEMU's group about ten
// times another session's.
const qemuAutogroupNice = -10

// raiseAutogroup sets the nice value of the autogroup of pid, which must
// lead its own session (Setsid) so that the group is its alone.
func raiseAutogroup(pid, nice int) error {
	p := "/proc/" + strconv.Itoa(pid) + "/autogroup"
	if err := os.WriteFile(p, []byte(strconv.Itoa(nice)), 0); err != nil {
		return fmt.Errorf("autogroup of pid %d: %w", pid, err)
	}
	return nil
}

// NVMe namespace 2's image in the run directory, and its size.
const (
	NVMe4KImageName = "nvme4k.img"
	NVMe4KSize      = 64 << 20
)

// sparseImage makes path a sparse file of size bytes (an existing one keeps
// its data).
func sparseImage(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("lab: disk image: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("lab: disk image %s: %w", filepath.Base(path), err)
	}
	return nil
}

// copySerial copies QEMU's output to the serial log (and echo), and
// timestamps the T markers dom0 prints, reporting each as progress.
func copySerial(r io.Reader, log io.Writer, echo io.Writer, start time.Time, p *Progress) []Stamp {
	var stamps []Stamp
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			log.Write(line)
			if echo != nil {
				echo.Write(line)
			}
			if bytes.Contains(line, []byte("@@LAB T ")) {
				for _, m := range ParseMarkers(line) {
					if m.Kind == "T" {
						name, _, _ := strings.Cut(m.Args, " ")
						at := time.Since(start)
						stamps = append(stamps, Stamp{Name: name, At: at})
						p.Printf("  %-16s at %5.1fs", name, at.Seconds())
					}
				}
			}
		}
		if err != nil {
			return stamps
		}
	}
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

// Tail returns the last n lines of a file (for failure reports), CRs removed.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := splitLines(bytes.TrimRight(b, "\r\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
