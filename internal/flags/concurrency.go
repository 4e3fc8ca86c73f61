// Package flags holds command-line flag types of the manager.
package flags

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Concurrency maps a controller name to its number of parallel workers. As a flag it accepts
// "name=N" pairs, comma separated or repeated: --concurrency=membercluster=50,pluginrelease=4.
type Concurrency map[string]int

// String implements flag.Value.
func (c Concurrency) String() string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, c[k]))
	}
	return strings.Join(parts, ",")
}

// Set implements flag.Value.
func (c Concurrency) Set(v string) error {
	for _, pair := range strings.Split(v, ",") {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		name, num, ok := strings.Cut(pair, "=")
		if !ok || name == "" {
			return fmt.Errorf("want controller=N, got %q", pair)
		}
		n, err := strconv.Atoi(num)
		if err != nil || n < 1 || n > 1000 {
			return fmt.Errorf("concurrency of %q must be a number from 1 to 1000, got %q", name, num)
		}
		c[strings.ToLower(name)] = n
	}
	return nil
}

// Type implements pflag.Value.
func (c Concurrency) Type() string { return "controller=N" }

// For returns the concurrency of a controller, or def when unset.
func (c Concurrency) For(name string, def int) int {
	if n, ok := c[strings.ToLower(name)]; ok {
		return n
	}
	return def
}
