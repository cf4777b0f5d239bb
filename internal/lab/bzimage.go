package lab

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
)

// x86 boot protocol header offsets (Documentation/arch/x86/boot.rst).
const (
	bzSetupSects    = 0x1f1 // u8: setup sectors (0 means 4)
	bzHeaderMagic   = 0x202 // "HdrS"
	bzVersion       = 0x206 // u16: boot protocol version
	bzPayloadOffset = 0x248 // u32: from the protected-mode code (2.08+)
	bzPayloadLength = 0x24c // u32
)

// ErrNotBzImage is returned for a kernel image without a usable payload.
var ErrNotBzImage = errors.New("not a bzImage with a payload (boot protocol 2.08+)")

// BzImagePayload returns the compressed kernel inside a bzImage and the
// name of its compression ("xz", "gzip", "zstd", ...).
func BzImagePayload(img []byte) ([]byte, string, error) {
	if len(img) < bzPayloadLength+4 || string(img[bzHeaderMagic:bzHeaderMagic+4]) != "HdrS" ||
		binary.LittleEndian.Uint16(img[bzVersion:]) < 0x208 {
		return nil, "", ErrNotBzImage
	}
	sects := int(img[bzSetupSects])
	if sects == 0 {
		sects = 4
	}
	off := uint64(sects+1)*512 + uint64(binary.LittleEndian.Uint32(img[bzPayloadOffset:]))
	n := uint64(binary.LittleEndian.Uint32(img[bzPayloadLength:]))
	if n == 0 || off+n > uint64(len(img)) {
		return nil, "", fmt.Errorf("%w: payload %d+%d outside %d bytes", ErrNotBzImage, off, n, len(img))
	}
	p := img[off : off+n]
	for _, c := range []struct {
		magic []byte
		name  string
	}{{[]byte{0xfd, '7', 'z', 'X', 'Z', 0}, "xz"}, {[]byte{0x1f, 0x8b}, "gzip"}, {[]byte{0x28, 0xb5, 0x2f, 0xfd}, "zstd"},
		{[]byte{0x5d, 0, 0}, "lzma"}, {[]byte("BZh"), "bzip2"}, {[]byte{0x02, 0x21, 0x4c, 0x18}, "lz4"}} {
		if bytes.HasPrefix(p, c.magic) {
			return p, c.name, nil
		}
	}
	return nil, "", fmt.Errorf("%w: unknown compression % x", ErrNotBzImage, p[:min(6, len(p))])
}

// ExtractVmlinux writes the ELF kernel inside the bzImage src to dst,
// decompressing it with the host's tool for its compression.
func ExtractVmlinux(ctx context.Context, src, dst string) error {
	img, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("vmlinux: %w", err)
	}
	payload, comp, err := BzImagePayload(img)
	if err != nil {
		return fmt.Errorf("vmlinux %s: %w", src, err)
	}
	tool := map[string][]string{"xz": {"xz", "-dc", "--single-stream"}, "gzip": {"gzip", "-dc"}, "zstd": {"zstd", "-dc"},
		"lzma": {"xz", "-dc", "--format=lzma"}, "bzip2": {"bzip2", "-dc"}, "lz4": {"lz4", "-dc"}}[comp]
	out, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("vmlinux: %w", err)
	}
	defer out.Close()
	cmd := exec.CommandContext(ctx, tool[0], tool[1:]...)
	cmd.Stdin, cmd.Stdout = bytes.NewReader(payload), out
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("vmlinux: %s: %w: %s", tool[0], err, stderr.Bytes())
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("vmlinux: %w", err)
	}
	head := make([]byte, 4)
	if f, err := os.Open(dst); err == nil {
		_, _ = f.Read(head)
		f.Close()
	}
	if string(head) != "\x7fELF" {
		return fmt.Errorf("vmlinux %s: decompressed payload is not an ELF", src)
	}
	return nil
}
