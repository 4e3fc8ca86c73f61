package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// requestCounts reads apiserver_request_total from an apiserver's /metrics, summed by
// "verb resource[/subresource]" (the work a phase costs the apiserver).
func requestCounts(ctx context.Context, cfg *rest.Config) (map[string]float64, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	raw, err := cs.RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		end := strings.LastIndexByte(line, '}')
		if end < 0 {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(line[end+1:]), 64)
		if err != nil {
			continue
		}
		labels := map[string]string{}
		for _, kv := range strings.Split(line[len("apiserver_request_total{"):end], ",") {
			k, val, ok := strings.Cut(kv, "=")
			if ok {
				labels[k] = strings.Trim(val, `"`)
			}
		}
		key := labels["verb"] + " " + labels["resource"]
		if s := labels["subresource"]; s != "" {
			key += "/" + s
		}
		out[key] += v
	}
	return out, sc.Err()
}

// printRequestDelta prints the requests an apiserver served between two requestCounts readings,
// largest first.
func printRequestDelta(name string, before, after map[string]float64, per int) {
	type row struct {
		k string
		v float64
	}
	var rows []row
	total := 0.0
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			rows = append(rows, row{k, d})
			total += d
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].v > rows[j].v })
	fmt.Printf("  %s: %.0f requests (%.1f per cluster):", name, total, total/float64(per))
	for i, r := range rows {
		if i == 12 {
			break
		}
		fmt.Printf(" %s=%.0f", r.k, r.v)
	}
	fmt.Println()
}

// cpuTicks is the machine's busy and total CPU time from /proc/stat, in clock ticks.
func cpuTicks() (busy, total uint64) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line)
	for i, s := range f[1:] {
		v, _ := strconv.ParseUint(s, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

// processCPU is the CPU time (user+system clock ticks) of every process on the machine, summed by
// command name: which of the manager, the apiservers and etcd a phase kept busy.
// A kube-apiserver whose command line contains mgmtArg counts as "management kube-apiserver",
// the others as "member kube-apiserver" (etcd is one figure for all).
func processCPU(mgmtArg string) map[string]uint64 {
	out := map[string]uint64{}
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, d := range dirs {
		if d.Name()[0] < '0' || d.Name()[0] > '9' {
			continue
		}
		raw, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(raw)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		f := strings.Fields(s[end+1:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseUint(f[11], 10, 64)
		st, _ := strconv.ParseUint(f[12], 10, 64)
		name := s[open+1 : end]
		if name == "kube-apiserver" {
			name = "member " + name
			if cmd, err := os.ReadFile("/proc/" + d.Name() + "/cmdline"); err == nil && mgmtArg != "" && strings.Contains(string(cmd), mgmtArg) {
				name = "management " + s[open+1:end]
			}
		}
		out[name] += u + st
	}
	return out
}

// printCPUDelta prints the CPU seconds each command used between two processCPU readings.
func printCPUDelta(before, after map[string]uint64) {
	type row struct {
		k string
		v uint64
	}
	var rows []row
	for k, v := range after {
		if v > before[k] {
			rows = append(rows, row{k, v - before[k]})
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].v > rows[j].v })
	fmt.Print("  CPU seconds by process:")
	for i, r := range rows {
		if i == 6 {
			break
		}
		fmt.Printf(" %s=%.1f", r.k, float64(r.v)/100)
	}
	fmt.Println()
}
