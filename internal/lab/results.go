package lab

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Marker is one "@@LAB <kind> <args>@@" line a lab script printed (see
// LibSh). Line is its 1-based line number in the log.
type Marker struct {
	Kind string
	Args string
	Line int
}

var markerRE = regexp.MustCompile(`@@LAB ([A-Z][A-Z0-9-]*)(?: ([^@]*))?@@`)

// ParseMarkers returns the markers in a console log, in order. Consoles
// carry CRs and interleaved kernel messages; a marker is found anywhere on
// its line.
func ParseMarkers(log []byte) []Marker {
	var out []Marker
	for i, line := range splitLines(log) {
		for _, m := range markerRE.FindAllSubmatch(line, -1) {
			out = append(out, Marker{Kind: string(m[1]), Args: strings.TrimSpace(string(m[2])), Line: i + 1})
		}
	}
	return out
}

func splitLines(b []byte) [][]byte {
	b = bytes.ReplaceAll(b, []byte("\r"), nil)
	return bytes.Split(b, []byte("\n"))
}

// Check is one pass/fail result.
type Check struct {
	Name   string
	Pass   bool
	Detail string
	Source string // the log it came from (dom0, drvdom, guest)
}

// Checks returns the CHECK markers of ms as results from source.
func Checks(ms []Marker, source string) []Check {
	var out []Check
	for _, m := range ms {
		if m.Kind != "CHECK" {
			continue
		}
		f := strings.SplitN(m.Args, " ", 3)
		if len(f) < 2 {
			continue
		}
		c := Check{Name: f[0], Pass: f[1] == "PASS", Source: source}
		if len(f) == 3 {
			c.Detail = f[2]
		}
		out = append(out, c)
	}
	return out
}

// ExtractFiles returns the files a script sent with lab_put: the lines
// between "FILE name" and "EOF name" markers. A file without its EOF
// marker is left out.
func ExtractFiles(log []byte) map[string][]byte {
	out := map[string][]byte{}
	var name string
	var buf bytes.Buffer
	open := false
	for _, line := range splitLines(log) {
		m := markerRE.FindSubmatch(line)
		if m != nil && string(m[1]) == "FILE" {
			name, open = strings.TrimSpace(string(m[2])), true
			buf.Reset()
			continue
		}
		if m != nil && string(m[1]) == "EOF" && open && strings.TrimSpace(string(m[2])) == name {
			out[name] = bytes.TrimRight(append([]byte(nil), buf.Bytes()...), "\n")
			open = false
			continue
		}
		if open {
			buf.Write(line)
			buf.WriteByte('\n')
		}
	}
	return out
}

// ScriptResult is what a script run by lab_run left in a log.
type ScriptResult struct {
	Output   string
	ExitCode int
	Finished bool // the END marker was seen
}

// FindScript returns the output and exit code of the script labelled label.
func FindScript(log []byte, label string) (ScriptResult, bool) {
	var r ScriptResult
	var buf strings.Builder
	started := false
	for _, line := range splitLines(log) {
		m := markerRE.FindSubmatch(line)
		if m != nil {
			kind, args := string(m[1]), strings.TrimSpace(string(m[2]))
			if kind == "BEGIN" && args == label {
				started = true
				buf.Reset()
				continue
			}
			if kind == "END" && started && strings.HasPrefix(args, label+" rc=") {
				n, err := strconv.Atoi(strings.TrimPrefix(args, label+" rc="))
				if err != nil {
					n = -1
				}
				r.ExitCode, r.Finished = n, true
				r.Output = buf.String()
				return r, true
			}
		}
		if started {
			buf.Write(line)
			buf.WriteByte('\n')
		}
	}
	if started {
		r.Output, r.ExitCode = buf.String(), -1
	}
	return r, started
}

// FioResult is the part of fio's JSON output the lab reports.
type FioResult struct {
	Job       string
	ReadIOPS  float64
	ReadBps   float64 // bytes/s
	WriteIOPS float64
	WriteBps  float64
	Errors    int
}

// ParseFio parses fio --output-format=json output (anything before the
// first '{' is skipped: fio may print warnings first) and sums its jobs.
func ParseFio(b []byte) (FioResult, error) {
	var r FioResult
	i := bytes.IndexByte(b, '{')
	if i < 0 {
		return r, errors.New("fio json: no object")
	}
	var doc struct {
		Jobs []struct {
			Jobname string `json:"jobname"`
			Error   int    `json:"error"`
			Read    struct {
				IOPS    float64 `json:"iops"`
				BwBytes float64 `json:"bw_bytes"`
			} `json:"read"`
			Write struct {
				IOPS    float64 `json:"iops"`
				BwBytes float64 `json:"bw_bytes"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if err := json.NewDecoder(bytes.NewReader(b[i:])).Decode(&doc); err != nil {
		return r, fmt.Errorf("fio json: %w", err)
	}
	if len(doc.Jobs) == 0 {
		return r, errors.New("fio json: no jobs")
	}
	r.Job = doc.Jobs[0].Jobname
	for _, j := range doc.Jobs {
		r.ReadIOPS += j.Read.IOPS
		r.ReadBps += j.Read.BwBytes
		r.WriteIOPS += j.Write.IOPS
		r.WriteBps += j.Write.BwBytes
		if j.Error != 0 {
			r.Errors++
		}
	}
	return r, nil
}

// IperfResult is the part of iperf3 -J output the lab reports.
type IperfResult struct {
	SentBps     float64 // bits/s
	ReceivedBps float64
	ReceivedS   float64 // seconds the receiver's sum covers
}

// ParseIperf3 parses iperf3 -J output; an "error" in it is returned as one.
func ParseIperf3(b []byte) (IperfResult, error) {
	var r IperfResult
	i := bytes.IndexByte(b, '{')
	if i < 0 {
		return r, errors.New("iperf3 json: no object")
	}
	var doc struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Bps float64 `json:"bits_per_second"`
			} `json:"sum_sent"`
			SumReceived struct {
				Bps     float64 `json:"bits_per_second"`
				Seconds float64 `json:"seconds"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.NewDecoder(bytes.NewReader(b[i:])).Decode(&doc); err != nil {
		return r, fmt.Errorf("iperf3 json: %w", err)
	}
	if doc.Error != "" {
		return r, fmt.Errorf("iperf3: %s", doc.Error)
	}
	r.SentBps, r.ReceivedBps, r.ReceivedS = doc.End.SumSent.Bps, doc.End.SumReceived.Bps, doc.End.SumReceived.Seconds
	return r, nil
}

// FailedDomain returns the domain named by a FAILED-DOMAIN marker and why.
func FailedDomain(ms []Marker) (name, why string, ok bool) {
	for _, m := range ms {
		if m.Kind == "FAILED-DOMAIN" {
			name, why, _ = strings.Cut(m.Args, " ")
			return name, why, true
		}
	}
	return "", "", false
}

// Timeline returns the T markers ("T name uptime") as name -> uptime
// seconds inside the domain that printed them.
func Timeline(ms []Marker) map[string]float64 {
	out := map[string]float64{}
	for _, m := range ms {
		if m.Kind != "T" {
			continue
		}
		f := strings.Fields(m.Args)
		if len(f) != 2 {
			continue
		}
		if v, err := strconv.ParseFloat(f[1], 64); err == nil {
			out[f[0]] = v
		}
	}
	return out
}
