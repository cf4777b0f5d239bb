package lab

import (
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// newc ("070701") cpio header: magic and 13 fields of 8 hex digits.
const (
	cpioMagic      = "070701"
	cpioHeaderSize = 6 + 13*8
	cpioTrailer    = "TRAILER!!!"
	modeDir        = 0o040000
	modeReg        = 0o100000
	modeSymlink    = 0o120000
)

// CpioWriter writes a newc cpio archive, the format Linux unpacks as an
// initramfs. Archives can be concatenated (also gzip members): the kernel
// unpacks them in order, later files replacing earlier ones. The lab uses
// that to add a small per-run archive to the shared rootfs ramdisk.
type CpioWriter struct {
	w    io.Writer
	gz   *gzip.Writer
	ino  uint32
	off  int64
	dirs map[string]bool
}

// NewCpioWriter returns a writer to w, gzip-compressed if compress.
func NewCpioWriter(w io.Writer, compress bool) *CpioWriter {
	c := &CpioWriter{w: w, ino: 1000, dirs: map[string]bool{}}
	if compress {
		c.gz, _ = gzip.NewWriterLevel(w, gzip.BestSpeed)
		c.w = c.gz
	}
	return c
}

func (c *CpioWriter) write(b []byte) error {
	n, err := c.w.Write(b)
	c.off += int64(n)
	if err != nil {
		return fmt.Errorf("cpio: %w", err)
	}
	return nil
}

func (c *CpioWriter) pad() error {
	if r := c.off % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

func (c *CpioWriter) entry(name string, mode uint32, data []byte) error {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	if name == "" {
		return fmt.Errorf("cpio: empty name")
	}
	c.ino++
	nlink := 1
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("%s%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		cpioMagic, c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	if err := c.write([]byte(hdr)); err != nil {
		return err
	}
	if err := c.write(append([]byte(name), 0)); err != nil {
		return err
	}
	if err := c.pad(); err != nil {
		return err
	}
	if err := c.write(data); err != nil {
		return err
	}
	return c.pad()
}

// AddDir adds a directory (and its missing parents) with mode 0755.
func (c *CpioWriter) AddDir(name string) error {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	if name == "" || c.dirs[name] {
		return nil
	}
	if err := c.AddDir(path.Dir(name)); err != nil {
		return err
	}
	c.dirs[name] = true
	return c.entry(name, modeDir|0o755, nil)
}

// AddFile adds a regular file (parents are added as needed).
func (c *CpioWriter) AddFile(name string, perm fs.FileMode, data []byte) error {
	if err := c.AddDir(path.Dir(path.Clean("/" + name))); err != nil {
		return err
	}
	return c.entry(name, modeReg|uint32(perm.Perm()), data)
}

// AddSymlink adds a symbolic link name -> target.
func (c *CpioWriter) AddSymlink(name, target string) error {
	if err := c.AddDir(path.Dir(path.Clean("/" + name))); err != nil {
		return err
	}
	return c.entry(name, modeSymlink|0o777, []byte(target))
}

// AddTree adds the host directory src (regular files, directories and
// symlinks) under the archive path prefix.
func (c *CpioWriter) AddTree(src, prefix string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("cpio: %w", err)
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return fmt.Errorf("cpio: %w", err)
		}
		name := path.Join(prefix, filepath.ToSlash(rel))
		switch {
		case d.IsDir():
			return c.AddDir(name)
		case d.Type()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("cpio: %w", err)
			}
			return c.AddSymlink(name, t)
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return fmt.Errorf("cpio: %w", err)
			}
			info, err := d.Info()
			if err != nil {
				return fmt.Errorf("cpio: %w", err)
			}
			return c.AddFile(name, info.Mode(), b)
		}
		return nil // sockets, devices: not needed
	})
}

// Close writes the trailer (and ends the gzip member).
func (c *CpioWriter) Close() error {
	if err := c.entry(cpioTrailer, 0, nil); err != nil {
		return err
	}
	if c.gz != nil {
		if err := c.gz.Close(); err != nil {
			return fmt.Errorf("cpio: gzip: %w", err)
		}
	}
	return nil
}

// CpioEntry is one member of an archive, as ReadCpio returns it.
type CpioEntry struct {
	Name string
	Mode uint32
	Data []byte
}

// ReadCpio parses an uncompressed newc archive up to its trailer (tests and
// tools; archives here are small).
func ReadCpio(b []byte) ([]CpioEntry, error) {
	var out []CpioEntry
	off := 0
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if len(b)-off < cpioHeaderSize || string(b[off:off+6]) != cpioMagic {
			return out, fmt.Errorf("cpio: bad header at %d", off)
		}
		field := func(i int) (int, error) {
			var v uint32
			_, err := fmt.Sscanf(string(b[off+6+8*i:off+6+8*i+8]), "%08x", &v)
			return int(v), err
		}
		mode, err1 := field(1)
		size, err2 := field(6)
		nsize, err3 := field(11)
		if err1 != nil || err2 != nil || err3 != nil || nsize < 1 {
			return out, fmt.Errorf("cpio: bad field at %d", off)
		}
		nameEnd := off + cpioHeaderSize + nsize
		dataStart := align(nameEnd)
		dataEnd := dataStart + size
		if nameEnd > len(b) || dataEnd > len(b) {
			return out, fmt.Errorf("cpio: truncated at %d", off)
		}
		name := string(b[off+cpioHeaderSize : nameEnd-1])
		if name == cpioTrailer {
			return out, nil
		}
		out = append(out, CpioEntry{Name: name, Mode: uint32(mode), Data: b[dataStart:dataEnd]})
		off = align(dataEnd)
	}
}
