// Command mkimage builds the drvdom driver domain image:
//
//	go run ./initramfs/cmd/mkimage -o drvdom.cpio.gz [-kernel-version V] [-modules-dir /lib/modules]
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"drvdom/initramfs"
)

func main() {
	out := flag.String("o", "drvdom.cpio.gz", "output image (gzip-compressed cpio)")
	kver := flag.String("kernel-version", "", "kernel whose modules go in (default: newest under -modules-dir)")
	mdir := flag.String("modules-dir", "/lib/modules", "where kernels' module trees live")
	mods := flag.String("modules", strings.Join(initramfs.DefaultModules, ","), "modules to include (comma-separated; dependencies follow)")
	conf := flag.String("config", "", "drvdomd.conf to put in the image (default: built-in defaults)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	o := initramfs.Options{Output: *out, KernelVersion: *kver, ModulesRoot: *mdir, Log: log}
	for _, m := range strings.Split(*mods, ",") {
		if m = strings.TrimSpace(m); m != "" {
			o.Modules = append(o.Modules, m)
		}
	}
	if *conf != "" {
		b, err := os.ReadFile(*conf)
		if err != nil {
			log.Error("read config", "err", err)
			os.Exit(1)
		}
		o.Config = string(b)
	}
	res, err := initramfs.Build(o)
	if err != nil {
		log.Error("mkimage failed", "err", err)
		os.Exit(1)
	}
	fmt.Printf("%s: %d bytes (%.1f MiB), kernel %s, %d modules\n", *out, res.Size, float64(res.Size)/(1<<20), res.KernelVersion, len(res.Modules))
}
