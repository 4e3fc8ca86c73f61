// Package netpolicy decides which network addresses the manager may connect to on a user's
// behalf. Member kubeconfigs and chart repository URLs both come from users, and both must never
// make the manager reach a cloud metadata service, its own pod, or the management cluster's
// networks. Literal addresses are checked when the input is accepted; every address is checked
// again right before dialling, after DNS resolution, so a name cannot smuggle one in.
package netpolicy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// Policy is one outbound address policy. The zero value refuses loopback and denies no extra
// networks; link-local, metadata and IPv4-embedding addresses are always refused.
type Policy struct {
	// AllowLoopback accepts loopback addresses (127.0.0.0/8, ::1, localhost): local development
	// and tests only, since in a real deployment loopback is the manager's own pod.
	AllowLoopback bool
	// DeniedCIDRs are refused before anything else is checked.
	DeniedCIDRs []netip.Prefix
	// LoopbackFlag and DeniedCIDRsFlag name the manager flags behind AllowLoopback and
	// DeniedCIDRs, so that a refusal tells the operator what to change.
	LoopbackFlag, DeniedCIDRsFlag string
}

// Addresses no outbound connection may have, whatever the flags: cloud metadata services that
// live outside the link-local range, and IPv6 forms that embed an IPv4 address (NAT64,
// IPv4-compatible, 6to4) and so could reach a refused one.
var (
	deniedAddrs = []netip.Addr{
		netip.MustParseAddr("fd00:ec2::254"),   // AWS IMDS over IPv6
		netip.MustParseAddr("100.100.100.200"), // Alibaba Cloud metadata
	}
	deniedPrefixes = []netip.Prefix{
		netip.MustParsePrefix("64:ff9b::/96"),   // NAT64 well-known prefix
		netip.MustParsePrefix("::/96"),          // IPv4-compatible IPv6 (deprecated)
		netip.MustParsePrefix("64:ff9b:1::/48"), // NAT64 local-use prefix (RFC 8215)
		netip.MustParsePrefix("2002::/16"),      // 6to4: embeds an IPv4 address (deprecated)
	}
)

// ParseCIDRs parses a comma-separated list of CIDRs (for the *-denied-cidrs flags).
func ParseCIDRs(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR: %w", f, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func (p Policy) loopbackRefused() error {
	if p.LoopbackFlag == "" {
		return errors.New("loopback addresses are not allowed")
	}
	return fmt.Errorf("loopback addresses are not allowed (the manager runs without %s)", p.LoopbackFlag)
}

// CheckHost refuses a host (a name or a literal address, as in a URL) the policy forbids.
// A name other than localhost passes here and is checked at dial time, after resolution.
func (p Policy) CheckHost(host string) error {
	h := strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		if !p.AllowLoopback {
			return p.loopbackRefused()
		}
		return nil
	}
	if addr, err := netip.ParseAddr(h); err == nil {
		return p.CheckAddr(addr)
	}
	return nil
}

// CheckAddr refuses an address the policy forbids.
func (p Policy) CheckAddr(addr netip.Addr) error {
	// A zone (fe80::1%eth0) must not make an address miss the checks below.
	addr = addr.Unmap().WithZone("")
	for _, pre := range p.DeniedCIDRs {
		if pre.Contains(addr) {
			if p.DeniedCIDRsFlag == "" {
				return fmt.Errorf("address %s is in a denied network (%s)", addr, pre)
			}
			return fmt.Errorf("address %s is in a denied network (%s %s)", addr, p.DeniedCIDRsFlag, pre)
		}
	}
	for _, d := range deniedAddrs {
		if addr == d {
			return fmt.Errorf("address %s is a cloud metadata service", addr)
		}
	}
	for _, pre := range deniedPrefixes {
		if addr.Is6() && !addr.IsUnspecified() && !addr.IsLoopback() && pre.Contains(addr) {
			return fmt.Errorf("address %s embeds an IPv4 address (%s) and is not allowed", addr, pre)
		}
	}
	switch {
	case addr.IsLinkLocalUnicast() || addr.IsLinkLocalMulticast():
		return fmt.Errorf("link-local address %s is not allowed (cloud metadata services live there)", addr)
	case addr.IsUnspecified() || addr.IsMulticast() || addr.IsInterfaceLocalMulticast():
		return fmt.Errorf("address %s is not a server address", addr)
	case addr.IsLoopback() && !p.AllowLoopback:
		return p.loopbackRefused()
	}
	return nil
}

// Dialer checks every address after DNS resolution, right before connecting.
func (p Policy) Dialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{
		Timeout:   timeout,
		KeepAlive: 30 * time.Second,
		Control: func(_, address string, _ syscall.RawConn) error {
			host, _, err := net.SplitHostPort(address)
			if err != nil {
				return err
			}
			addr, err := netip.ParseAddr(host)
			if err != nil {
				return fmt.Errorf("refusing to dial %q: not an IP address", host)
			}
			if err := p.CheckAddr(addr); err != nil {
				return &RefusedError{Addr: addr, Err: err}
			}
			return nil
		},
	}
}

// RefusedError is an address the dialer refused to connect to.
type RefusedError struct {
	Addr netip.Addr
	Err  error
}

func (e *RefusedError) Error() string { return "refusing to dial: " + e.Err.Error() }
func (e *RefusedError) Unwrap() error { return e.Err }

// IsRefused tells whether err comes from the dialer refusing an address (as opposed to the
// network failing), and returns the refusal.
func IsRefused(err error) (*RefusedError, bool) {
	var re *RefusedError
	ok := errors.As(err, &re)
	return re, ok
}
