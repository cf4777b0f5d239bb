package lab

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// DefaultCacheDir is ${XDG_CACHE_HOME:-$HOME/.cache}/drvdom.
func DefaultCacheDir() (string, error) {
	if x := os.Getenv("XDG_CACHE_HOME"); x != "" {
		return filepath.Join(x, "drvdom"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("lab: cache dir: %w", err)
	}
	return filepath.Join(home, ".cache", "drvdom"), nil
}

// Key hashes an artifact's inputs: its name, Recipe, and every input as
// name=value, sorted so that the map's order does not matter. Any change of
// a version (or of a generated file's text) changes the key.
func Key(artifact string, inputs map[string]string) string {
	names := make([]string, 0, len(inputs))
	for n := range inputs {
		names = append(names, n)
	}
	sort.Strings(names)
	h := sha256.New()
	fmt.Fprintf(h, "artifact=%s\nrecipe=%s\n", artifact, Recipe)
	for _, n := range names {
		fmt.Fprintf(h, "%s=%q\n", n, inputs[n])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Cache is the artifact cache: one directory per artifact and key,
// <dir>/<artifact>/<key>/, complete once its stamp file exists.
type Cache struct {
	Dir string
}

const stampName = ".stamp"

// Path is the directory of artifact at key.
func (c *Cache) Path(artifact, key string) string {
	return filepath.Join(c.Dir, artifact, key)
}

// Ready reports whether artifact at key was completely built.
func (c *Cache) Ready(artifact, key string) bool {
	_, err := os.Stat(filepath.Join(c.Path(artifact, key), stampName))
	return err == nil
}

// Build makes artifact at key with build, which fills a fresh temporary
// directory; on success the directory is renamed into place and stamped with
// the inputs. A ready artifact is not rebuilt.
func (c *Cache) Build(artifact, key string, inputs map[string]string, build func(dir string) error) (string, error) {
	final := c.Path(artifact, key)
	if c.Ready(artifact, key) {
		return final, nil
	}
	tmp := final + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", fmt.Errorf("lab: %s: clear %s: %w", artifact, tmp, err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", fmt.Errorf("lab: %s: %w", artifact, err)
	}
	if err := build(tmp); err != nil {
		return "", fmt.Errorf("lab: %s: %w", artifact, err)
	}
	var stamp strings.Builder
	names := make([]string, 0, len(inputs))
	for n := range inputs {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(&stamp, "recipe=%s\n", Recipe)
	for _, n := range names {
		v := inputs[n]
		if len(v) > 200 {
			v = fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(v)))
		}
		fmt.Fprintf(&stamp, "%s=%s\n", n, v)
	}
	if err := os.WriteFile(filepath.Join(tmp, stampName), []byte(stamp.String()), 0o644); err != nil {
		return "", fmt.Errorf("lab: %s: stamp: %w", artifact, err)
	}
	if err := os.RemoveAll(final); err != nil {
		return "", fmt.Errorf("lab: %s: %w", artifact, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("lab: %s: %w", artifact, err)
	}
	return final, nil
}
