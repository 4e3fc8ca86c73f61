package netpolicy

import (
	"context"
	"net/netip"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestRefusedAddressesNameTheFlag(t *testing.T) {
	g := NewWithT(t)
	p := Policy{LoopbackFlag: "--allow-loopback-repositories", DeniedCIDRsFlag: "--repository-denied-cidrs",
		DeniedCIDRs: mustCIDRs(t, "10.96.0.0/12")}
	g.Expect(p.CheckHost("localhost")).To(MatchError(ContainSubstring("--allow-loopback-repositories")))
	g.Expect(p.CheckHost("127.0.0.1")).To(MatchError(ContainSubstring("--allow-loopback-repositories")))
	g.Expect(p.CheckHost("[::1]")).To(MatchError(ContainSubstring("loopback")))
	g.Expect(p.CheckHost("10.96.0.10")).To(MatchError(ContainSubstring("--repository-denied-cidrs 10.96.0.0/12")))
	for _, h := range []string{"169.254.169.254", "fe80::1%eth0", "fd00:ec2::254", "100.100.100.200",
		"::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "0.0.0.0", "224.0.0.1"} {
		g.Expect(p.CheckHost(h)).To(HaveOccurred(), h)
		g.Expect(Policy{AllowLoopback: true}.CheckHost(h)).To(HaveOccurred(), h)
	}
	g.Expect(p.CheckHost("charts.example.com")).To(Succeed(), "names are checked when dialled")
	g.Expect(p.CheckHost("10.200.0.1")).To(Succeed())
	g.Expect(Policy{AllowLoopback: true}.CheckHost("127.0.0.1")).To(Succeed())
}

func TestDialerRefusesAfterResolution(t *testing.T) {
	g := NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := Policy{LoopbackFlag: "--allow-loopback-repositories"}.Dialer(time.Second).DialContext(ctx, "tcp", "localhost:1")
	re, ok := IsRefused(err)
	g.Expect(ok).To(BeTrue(), "%v", err)
	g.Expect(re.Addr.IsLoopback()).To(BeTrue())
	g.Expect(err).To(MatchError(ContainSubstring("--allow-loopback-repositories")))
	_, err = Policy{AllowLoopback: true}.Dialer(time.Second).DialContext(ctx, "tcp", "127.0.0.1:1")
	_, ok = IsRefused(err)
	g.Expect(ok).To(BeFalse(), "allowed: the dial happens and the connection is refused by the kernel: %v", err)
	g.Expect(err).To(HaveOccurred())
}

func mustCIDRs(t *testing.T, s string) []netip.Prefix {
	p, err := ParseCIDRs(s)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	return p
}
