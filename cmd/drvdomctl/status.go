package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"drvdom/xenstore"
	"drvdom/xenstore/xenbus"
)

// storeReader is the part of xenstore status needs.
type storeReader interface {
	Read(ctx context.Context, path string) (string, error)
	Directory(ctx context.Context, path string) ([]string, error)
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("drvdomctl status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "drvdom", "driver domain name")
	domid := fs.Int("domid", -1, "driver domain id (overrides -name)")
	socket := fs.String("socket", "", "xenstored socket (default: /dev/xen/xenbus, then /run/xenstored/socket)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c, err := openStore(*socket)
	if err != nil {
		fmt.Fprintf(stderr, "drvdomctl status: %v\n", err)
		return 1
	}
	defer c.Close()
	if err := writeStatus(ctx, c, *name, *domid, stdout); err != nil {
		fmt.Fprintf(stderr, "drvdomctl status: %v\n", err)
		return 1
	}
	return 0
}

type domain struct {
	id   int
	name string
}

func listDomains(ctx context.Context, s storeReader) ([]domain, error) {
	ids, err := s.Directory(ctx, "/local/domain")
	if err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	var out []domain
	for _, d := range ids {
		n, err := strconv.Atoi(d)
		if err != nil || n < 0 || n > 0xFFFF {
			continue
		}
		name, _ := s.Read(ctx, "/local/domain/"+d+"/name")
		out = append(out, domain{id: n, name: name})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out, nil
}

func stateName(v string, err error) string {
	if err != nil {
		if errors.Is(err, xenstore.ErrNotExist) {
			return "-"
		}
		return "?"
	}
	st, ok := xenbus.ParseState(v)
	if !ok {
		return fmt.Sprintf("bad(%.8q)", v)
	}
	return st.String()
}

// writeStatus prints the domains, then every device under the driver
// domain's backend tree with both ends' states.
func writeStatus(ctx context.Context, s storeReader, name string, domid int, w io.Writer) error {
	doms, err := listDomains(ctx, s)
	if err != nil {
		return err
	}
	names := map[int]string{}
	fmt.Fprintln(w, "DOMAINS")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME")
	for _, d := range doms {
		names[d.id] = d.name
		fmt.Fprintf(tw, "%d\t%s\n", d.id, d.name)
		if domid < 0 && d.name == name {
			domid = d.id
		}
	}
	tw.Flush()
	if domid < 0 {
		return fmt.Errorf("no domain named %q (use -domid)", name)
	}
	fmt.Fprintf(w, "\nDEVICES served by domain %d (%s)\n", domid, names[domid])
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TYPE\tGUEST\tDEVID\tBACKEND\tFRONTEND\tONLINE\tHOTPLUG\tERROR")
	root := "/local/domain/" + strconv.Itoa(domid) + "/backend"
	types, err := s.Directory(ctx, root)
	if err != nil && !errors.Is(err, xenstore.ErrNotExist) {
		return fmt.Errorf("list %s: %w", root, err)
	}
	sort.Strings(types)
	n := 0
	for _, typ := range types {
		fds, _ := s.Directory(ctx, root+"/"+typ)
		sort.Slice(fds, func(i, j int) bool { return numLess(fds[i], fds[j]) })
		for _, fd := range fds {
			ids, _ := s.Directory(ctx, root+"/"+typ+"/"+fd)
			sort.Slice(ids, func(i, j int) bool { return numLess(ids[i], ids[j]) })
			for _, id := range ids {
				bp := root + "/" + typ + "/" + fd + "/" + id
				bs := stateName(s.Read(ctx, bp+"/state"))
				front, ferr := s.Read(ctx, bp+"/frontend")
				fst := "-"
				if ferr == nil {
					fst = stateName(s.Read(ctx, front+"/state"))
				}
				online, _ := s.Read(ctx, bp+"/online")
				hp, _ := s.Read(ctx, bp+"/hotplug-status")
				errv, _ := s.Read(ctx, "/local/domain/"+strconv.Itoa(domid)+"/error/backend/"+typ+"/"+fd+"/"+id+"/error")
				if errv == "" {
					errv, _ = s.Read(ctx, bp+"/hotplug-error")
				}
				guest := fd
				if fdn, err := strconv.Atoi(fd); err == nil && names[fdn] != "" {
					guest += " (" + names[fdn] + ")"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", typ, guest, id, bs, fst, dash(online), dash(hp), dash(oneLine(errv)))
				n++
			}
		}
	}
	tw.Flush()
	if n == 0 {
		fmt.Fprintln(w, "(no devices)")
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 60 {
		s = s[:60] + "..."
	}
	return s
}

func numLess(a, b string) bool {
	x, err1 := strconv.Atoi(a)
	y, err2 := strconv.Atoi(b)
	if err1 != nil || err2 != nil {
		return a < b
	}
	return x < y
}

// openStore connects to xenstore through socket if given, else the usual
// way (/dev/xen/xenbus, then xenstored's socket).
func openStore(socket string) (*xenstore.Client, error) {
	if socket != "" {
		return xenstore.DialSocket(socket)
	}
	return xenstore.Open()
}
