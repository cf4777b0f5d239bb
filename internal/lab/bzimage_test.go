package lab

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// fakeBzImage builds a bzImage header around payload.
func fakeBzImage(setupSects byte, payload []byte) []byte {
	eff := int(setupSects)
	if eff == 0 {
		eff = 4 // boot protocol: 0 means 4
	}
	img := make([]byte, (eff+1)*512+100)
	img[bzSetupSects] = setupSects
	copy(img[bzHeaderMagic:], "HdrS")
	binary.LittleEndian.PutUint16(img[bzVersion:], 0x20f)
	binary.LittleEndian.PutUint32(img[bzPayloadOffset:], 100)
	binary.LittleEndian.PutUint32(img[bzPayloadLength:], uint32(len(payload)))
	img = append(img, payload...)
	return append(img, "trailing"...)
}

func TestBzImagePayload(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("\x7fELF kernel"))
	zw.Close()
	p, comp, err := BzImagePayload(fakeBzImage(27, gz.Bytes()))
	if err != nil || comp != "gzip" || !bytes.Equal(p, gz.Bytes()) {
		t.Fatalf("payload %d bytes %q %v", len(p), comp, err)
	}
	xzMagic := []byte{0xfd, '7', 'z', 'X', 'Z', 0, 1, 2}
	if _, comp, err := BzImagePayload(fakeBzImage(0, xzMagic)); err != nil || comp != "xz" {
		t.Fatalf("xz: %q %v", comp, err)
	}
	bad := fakeBzImage(27, gz.Bytes())
	binary.LittleEndian.PutUint32(bad[bzPayloadLength:], 1<<30)
	if _, _, err := BzImagePayload(bad); !errors.Is(err, ErrNotBzImage) {
		t.Errorf("payload past the end: %v", err)
	}
	old := fakeBzImage(27, gz.Bytes())
	binary.LittleEndian.PutUint16(old[bzVersion:], 0x207)
	if _, _, err := BzImagePayload(old); !errors.Is(err, ErrNotBzImage) {
		t.Errorf("protocol 2.07: %v", err)
	}
	if _, _, err := BzImagePayload([]byte("short")); !errors.Is(err, ErrNotBzImage) {
		t.Errorf("short: %v", err)
	}
	if _, _, err := BzImagePayload(fakeBzImage(27, []byte("????"))); !errors.Is(err, ErrNotBzImage) {
		t.Errorf("unknown compression: %v", err)
	}
}

func TestExtractVmlinux(t *testing.T) {
	if _, err := exec.LookPath("gzip"); err != nil {
		t.Skip("no gzip on the host")
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("\x7fELF kernel"))
	zw.Close()
	dir := t.TempDir()
	src := filepath.Join(dir, "vmlinuz")
	os.WriteFile(src, fakeBzImage(27, gz.Bytes()), 0o644)
	dst := filepath.Join(dir, "vmlinux")
	if err := ExtractVmlinux(context.Background(), src, dst); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "\x7fELF kernel" {
		t.Fatalf("vmlinux %q", b)
	}
}
