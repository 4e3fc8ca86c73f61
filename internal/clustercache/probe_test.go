package clustercache

import (
	"context"
	"net"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/client-go/rest"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/internal/scheme"
)

// A member that accepts connections and closes them (a dead apiserver behind a load balancer)
// fails a probe at once: client-go's GET retries must not stretch it to the probe timeout.
func TestProbeFailsFastWhenConnectionsAreClosed(t *testing.T) {
	g := NewWithT(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = ln.Close() }()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	cache := New(Options{Scheme: scheme.New()})
	acc, err := cache.Connect("eof", "v1", &rest.Config{Host: "https://" + ln.Addr().String(), TLSClientConfig: rest.TLSClientConfig{Insecure: true}})
	g.Expect(err).NotTo(HaveOccurred())

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res := acc.Probe(ctx)
	g.Expect(res.Err).To(HaveOccurred())
	g.Expect(res.Reason).To(Equal(clustersv1.ReasonClusterNotReachable))
	g.Expect(res.Latency).To(BeNumerically("<", time.Second), "no retries inside one probe")
}

// A port with nothing listening fails fast too.
func TestProbeFailsFastWhenRefused(t *testing.T) {
	g := NewWithT(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	addr := ln.Addr().String()
	_ = ln.Close()
	acc, err := New(Options{Scheme: scheme.New()}).Connect("refused", "v1", &rest.Config{Host: "https://" + addr})
	g.Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res := acc.Probe(ctx)
	g.Expect(res.Reason).To(Equal(clustersv1.ReasonClusterNotReachable))
	g.Expect(res.Latency).To(BeNumerically("<", time.Second))
}
