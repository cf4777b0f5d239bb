package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// ScratchFile is one file of the scratch= key: a path in the driver domain
// (usually its tmpfs) and the size it is created with.
type ScratchFile struct {
	Path string
	Size int64 // bytes
}

// MaxScratchSize bounds one scratch file (the domain's tmpfs is far smaller;
// a bigger number is a typo).
const MaxScratchSize = 1 << 40

// ParseScratch parses "PATH:SIZE[,PATH:SIZE...]" (SIZE in bytes or with a
// K, M or G suffix, powers of 1024; "" or "none": no files). Paths must be
// absolute and clean; the same path twice is an error.
func ParseScratch(val string) ([]ScratchFile, error) {
	val = strings.TrimSpace(val)
	if val == "" || val == "none" {
		return nil, nil
	}
	var out []ScratchFile
	seen := map[string]bool{}
	for _, item := range strings.Split(val, ",") {
		p, sz, ok := strings.Cut(strings.TrimSpace(item), ":")
		if !ok {
			return nil, fmt.Errorf("%q: want PATH:SIZE", item)
		}
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
			return nil, fmt.Errorf("%q: not a clean absolute path", p)
		}
		n, err := parseSize(sz)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", item, err)
		}
		if seen[p] {
			return nil, fmt.Errorf("%q named twice", p)
		}
		seen[p] = true
		out = append(out, ScratchFile{Path: p, Size: n})
	}
	return out, nil
}

// parseSize parses a positive size: digits with an optional K, M or G
// suffix (1024-based).
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	if s != "" {
		switch s[len(s)-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		}
		if mult > 1 {
			s = s[:len(s)-1]
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, errors.New("size must be a positive number with an optional K, M or G")
	}
	if n > MaxScratchSize/mult {
		return 0, fmt.Errorf("size over %d bytes", int64(MaxScratchSize))
	}
	return n * mult, nil
}

// scratchString is the scratch= value of files (for `drvdomd config`).
func scratchString(files []ScratchFile) string {
	if len(files) == 0 {
		return "none"
	}
	parts := make([]string, len(files))
	for i, f := range files {
		parts[i] = f.Path + ":" + strconv.FormatInt(f.Size, 10)
	}
	return strings.Join(parts, ",")
}
