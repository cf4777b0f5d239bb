package lab

import (
	"fmt"
	"io"
	"strings"
)

// BenchStat summarises the samples of one cell of the matrix.
type BenchStat struct {
	N      int     // samples that measured something
	Failed int     // samples that failed
	Median float64 // of the row's metric, over the N samples
	Min    float64 // smallest and largest of the N samples: the spread
	Max    float64
	LatUs  float64 // median mean latency (block rows)
	Reason string  // the first failure's reason
}

// OK reports whether the cell has a figure.
func (s BenchStat) OK() bool { return s.N > 0 }

// BenchRow is one row of the table: a block workload on a backing, or a
// network workload.
type BenchRow struct {
	Kind     string // "block" or "net"
	Backing  string // block rows
	Workload string
	Metric   string
	Limit    BenchStat            // the device limit, over every boot
	LimitBy  map[string]BenchStat // the device limit, over the boots of one backend mode
	Guest    map[string]BenchStat // the guest's figure per backend
}

// Label names the row in tables and charts.
func (r BenchRow) Label() string {
	if r.Kind == "net" {
		return "net " + r.Workload
	}
	return r.Backing + " " + r.Workload
}

// BenchRatio is one ratio of a row; OK is false when a side is missing.
type BenchRatio struct {
	Name  string // "drvdom/kernel", "kernel/limit", "drvdom/limit"
	Value float64
	OK    bool
}

// Ratios returns the row's ratios, in a fixed order: drvdom/kernel (when
// both backends are benched), then backend/limit for every backend (block
// rows). A guest/limit ratio divides by the limit measured in the same
// backend mode's boots, falling back to all boots.
func (r BenchRow) Ratios(backends []string) []BenchRatio {
	var out []BenchRatio
	has := func(be string) bool {
		for _, b := range backends {
			if b == be {
				return true
			}
		}
		return false
	}
	ratio := func(name string, num, den BenchStat) {
		ok := num.OK() && den.OK() && den.Median > 0
		v := 0.0
		if ok {
			v = num.Median / den.Median
		}
		out = append(out, BenchRatio{Name: name, Value: v, OK: ok})
	}
	if has(BackendKernel) && has(BackendDrvdom) {
		ratio(BackendDrvdom+"/"+BackendKernel, r.Guest[BackendDrvdom], r.Guest[BackendKernel])
	}
	if r.Kind == "block" {
		for _, be := range backends {
			lim := r.LimitBy[be]
			if !lim.OK() {
				lim = r.Limit
			}
			ratio(be+"/limit", r.Guest[be], lim)
		}
	}
	return out
}

func benchValue(s BenchSample, metric string) float64 {
	switch metric {
	case MetricIOPS:
		return s.IOPS
	case MetricMBps:
		return s.MBps
	}
	return s.Gbps
}

func benchStat(samples []BenchSample, metric string) BenchStat {
	var st BenchStat
	var vals, lats []float64
	for _, s := range samples {
		if !s.OK {
			st.Failed++
			if st.Reason == "" {
				st.Reason = s.Error
			}
			continue
		}
		vals = append(vals, benchValue(s, metric))
		if s.LatUs > 0 {
			lats = append(lats, s.LatUs)
		}
	}
	st.N = len(vals)
	st.Median = Median(vals)
	if len(vals) > 0 {
		c := sortedCopy(vals)
		st.Min, st.Max = c[0], c[len(c)-1]
	}
	st.LatUs = Median(lats)
	return st
}

// AggregateBench groups samples into the table's rows (block rows per
// backing in BlockWorkloads order, then network rows) with medians.
func AggregateBench(samples []BenchSample, backends []string) []BenchRow {
	pick := func(f func(BenchSample) bool) []BenchSample {
		var out []BenchSample
		for _, s := range samples {
			if f(s) {
				out = append(out, s)
			}
		}
		return out
	}
	var rows []BenchRow
	for _, bk := range Backings {
		for _, w := range BlockWorkloads {
			r := BenchRow{Kind: "block", Backing: bk, Workload: w.Name, Metric: w.Metric,
				LimitBy: map[string]BenchStat{}, Guest: map[string]BenchStat{}}
			r.Limit = benchStat(pick(func(s BenchSample) bool {
				return s.Path == PathDevice && s.Backing == bk && s.Workload == w.Name
			}), w.Metric)
			for _, be := range backends {
				r.LimitBy[be] = benchStat(pick(func(s BenchSample) bool {
					return s.Path == PathDevice && s.Backing == bk && s.Workload == w.Name && s.Backend == be
				}), w.Metric)
				r.Guest[be] = benchStat(pick(func(s BenchSample) bool {
					return s.Path == PathGuest && s.Backing == bk && s.Workload == w.Name && s.Backend == be
				}), w.Metric)
			}
			rows = append(rows, r)
		}
	}
	for _, w := range NetWorkloads {
		r := BenchRow{Kind: "net", Workload: w.Name, Metric: MetricGbps, LimitBy: map[string]BenchStat{}, Guest: map[string]BenchStat{}}
		for _, be := range backends {
			r.Guest[be] = benchStat(pick(func(s BenchSample) bool {
				return s.Path == PathNet && s.Workload == w.Name && s.Backend == be
			}), MetricGbps)
		}
		rows = append(rows, r)
	}
	return rows
}

func fmtBenchValue(v float64, metric string) string {
	switch metric {
	case MetricIOPS:
		return fmt.Sprintf("%.0f", v)
	case MetricMBps:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

// mdEscape keeps a free text inside one markdown table cell.
func mdEscape(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		s = s[:max] + "…"
	}
	return strings.ReplaceAll(s, "|", `\|`)
}

func mdCell(st BenchStat, metric string, applicable bool) string {
	switch {
	case !applicable:
		return "—"
	case st.N == 0 && st.Failed == 0:
		return "—"
	case st.N == 0:
		return "FAILED: " + mdEscape(st.Reason, 90)
	}
	extra := fmt.Sprintf("n=%d", st.N)
	if st.N > 1 {
		extra += fmt.Sprintf(", %s–%s", fmtBenchValue(st.Min, metric), fmtBenchValue(st.Max, metric))
	}
	if st.LatUs > 0 {
		extra += fmt.Sprintf(", %.0f µs", st.LatUs)
	}
	if st.Failed > 0 {
		extra += fmt.Sprintf(", %d failed", st.Failed)
	}
	return fmt.Sprintf("%s (%s)", fmtBenchValue(st.Median, metric), extra)
}

// WriteBenchMarkdown writes the table: one line per row with the median
// device limit, the median per backend, and the ratios.
func WriteBenchMarkdown(w io.Writer, rows []BenchRow, backends []string) {
	var ratioNames []string
	if len(rows) > 0 {
		for _, r := range rows {
			if r.Kind == "block" {
				for _, q := range r.Ratios(backends) {
					ratioNames = append(ratioNames, q.Name)
				}
				break
			}
		}
	}
	head := []string{"row", "metric", "device limit"}
	for _, be := range backends {
		head = append(head, be)
	}
	head = append(head, ratioNames...)
	fmt.Fprintf(w, "| %s |\n", strings.Join(head, " | "))
	seps := make([]string, len(head))
	for i := range seps {
		seps[i] = "---:"
	}
	seps[0], seps[1] = "---", "---"
	fmt.Fprintf(w, "|%s|\n", strings.Join(seps, "|"))
	for _, r := range rows {
		cells := []string{r.Label(), r.Metric, mdCell(r.Limit, r.Metric, r.Kind == "block")}
		for _, be := range backends {
			cells = append(cells, mdCell(r.Guest[be], r.Metric, true))
		}
		byName := map[string]BenchRatio{}
		for _, q := range r.Ratios(backends) {
			byName[q.Name] = q
		}
		for _, n := range ratioNames {
			q, ok := byName[n]
			if !ok || !q.OK {
				cells = append(cells, "—")
				continue
			}
			cells = append(cells, fmt.Sprintf("%.2fx", q.Value))
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Medians over the repetitions (n = samples that measured, then min–max over them; µs = median of the mean completion latencies; "+
		"\"k failed\" = samples not counted, with their reason in bench.json). Every ratio divides medians measured in this run. "+
		"Device limit: fio inside the driver domain on the backing itself (tmpfs: a loop device over the file). "+
		"backend/limit divides by the limit measured in that backend mode's boots. Net: iperf3 TCP, Gbit/s received.")
}

// svgEscape escapes text for SVG character data and attribute values.
func svgEscape(s string) string {
	r := strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&apos;")
	return r.Replace(s)
}

// Chart colours per ratio name.
var benchRatioColors = map[string]string{
	BackendDrvdom + "/" + BackendKernel: "#d95f02",
	BackendKernel + "/limit":            "#1b9e77",
	BackendDrvdom + "/limit":            "#7570b3",
}

// WriteBenchSVG draws the ratios at a glance: per row a group of
// horizontal bars (one rect of class "bar" per defined ratio, "n/a" for a
// missing one), a dashed line at 1.0x, labels and a legend.
func WriteBenchSVG(w io.Writer, rows []BenchRow, backends []string) error {
	const (
		labelW = 230
		barW   = 520
		barH   = 12
		gap    = 3
		rowGap = 10
		top    = 50
		left   = 10
	)
	maxV := 1.25
	var names []string
	seen := map[string]bool{}
	for _, r := range rows {
		for _, q := range r.Ratios(backends) {
			if !seen[q.Name] {
				seen[q.Name] = true
				names = append(names, q.Name)
			}
			if q.OK && q.Value*1.1 > maxV {
				maxV = q.Value * 1.1
			}
		}
	}
	x0 := left + labelW
	scale := func(v float64) float64 { return float64(barW) * v / maxV }
	height := top
	for _, r := range rows {
		n := len(r.Ratios(backends))
		if n == 0 {
			n = 1
		}
		height += n*(barH+gap) + rowGap
	}
	height += 30
	width := x0 + barW + 70
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<text x="%d" y="18" font-size="14" font-weight="bold">drvdom bench: ratios (medians)</text>`+"\n", left)
	lx := left
	for _, n := range names {
		fmt.Fprintf(&b, `<rect class="legend" x="%d" y="28" width="10" height="10" fill="%s"/><text x="%d" y="37">%s</text>`+"\n",
			lx, benchRatioColors[n], lx+14, svgEscape(n))
		lx += 14 + 8*len(n) + 16
	}
	y := top
	for _, r := range rows {
		qs := r.Ratios(backends)
		n := len(qs)
		if n == 0 {
			n = 1
		}
		groupH := n*(barH+gap) - gap
		fmt.Fprintf(&b, `<text x="%d" y="%d" dominant-baseline="middle">%s</text>`+"\n", left, y+groupH/2, svgEscape(r.Label()+" ("+r.Metric+")"))
		for i, q := range qs {
			by := y + i*(barH+gap)
			if !q.OK {
				fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#999">%s n/a</text>`+"\n", x0+3, by+barH-2, svgEscape(q.Name))
				continue
			}
			bw := scale(q.Value)
			fmt.Fprintf(&b, `<rect class="bar" x="%d" y="%d" width="%.1f" height="%d" fill="%s"><title>%s %s %.2fx</title></rect>`+"\n",
				x0, by, bw, barH, benchRatioColors[q.Name], svgEscape(r.Label()), svgEscape(q.Name), q.Value)
			fmt.Fprintf(&b, `<text x="%.1f" y="%d">%.2fx</text>`+"\n", float64(x0)+bw+4, by+barH-2, q.Value)
		}
		y += groupH + gap + rowGap
	}
	one := float64(x0) + scale(1)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#000" stroke-width="1"/>`+"\n", x0, top-4, x0, y)
	fmt.Fprintf(&b, `<line class="one" x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#c00" stroke-dasharray="4 3"/>`+"\n", one, top-4, one, y)
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="#c00" text-anchor="middle">1.0x</text>`+"\n", one, y+14)
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}
