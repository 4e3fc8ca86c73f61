package clustercache

import (
	"context"
	"errors"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/paddock-dev/paddock/internal/scheme"
)

func TestCacheLifecycleAndNotifications(t *testing.T) {
	g := NewWithT(t)
	c := New(Options{Scheme: scheme.New(), QPS: 7, Burst: 9, Timeout: 3 * time.Second})
	events := c.Subscribe()
	cfg := &rest.Config{Host: "https://10.0.0.1:6443"}
	ctx := context.Background()

	_, err := c.Get(ctx, "m")
	g.Expect(errors.Is(err, ErrNotConnected)).To(BeTrue())

	acc, err := c.Connect("m", "v1", cfg)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(acc.Config.QPS).To(Equal(float32(7)))
	g.Expect(acc.Config.Burst).To(Equal(9))
	g.Expect(acc.Config.Timeout).To(Equal(3 * time.Second))
	g.Expect(acc.Config.RateLimiter).NotTo(BeNil(), "one limiter shared by the member's clients")
	cl, err := acc.Client()
	g.Expect(err).NotTo(HaveOccurred())
	cl2, _ := acc.Client()
	g.Expect(cl2).To(BeIdenticalTo(cl), "built once")
	again, err := c.Connect("m", "v1", cfg)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(again).To(BeIdenticalTo(acc), "same version: cached")

	_, err = c.Get(ctx, "m")
	var nre *NotReadyError
	g.Expect(errors.As(err, &nre)).To(BeTrue(), "connected but not yet ready")

	c.SetReady("m", true, "")
	g.Expect(receive(events)).To(Equal("m"))
	got, err := c.Get(ctx, "m")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(BeIdenticalTo(acc))
	c.SetReady("m", true, "")
	g.Consistently(events, 100*time.Millisecond).ShouldNot(Receive(), "no event without a change")

	// A new kubeconfig version rebuilds and starts not ready; dependants hear about it.
	rebuilt, err := c.Connect("m", "v2", cfg)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(rebuilt).NotTo(BeIdenticalTo(acc))
	g.Expect(receive(events)).To(Equal("m"))
	_, err = c.Get(ctx, "m")
	g.Expect(errors.As(err, &nre)).To(BeTrue())

	c.SetReady("m", true, "")
	g.Expect(receive(events)).To(Equal("m"))
	c.SetReady("m", false, "ClusterNotReachable")
	g.Expect(receive(events)).To(Equal("m"))
	_, err = c.Get(ctx, "m")
	g.Expect(errors.As(err, &nre)).To(BeTrue())
	g.Expect(nre.Reason).To(Equal("ClusterNotReachable"))

	c.SetReady("m", true, "")
	<-events
	c.Disconnect("m")
	g.Expect(receive(events)).To(Equal("m"))
	g.Expect(c.Len()).To(Equal(0))
	_, ok := c.Peek("m")
	g.Expect(ok).To(BeFalse())
}

func receive(ch <-chan event.GenericEvent) string {
	select {
	case e := <-ch:
		return e.Object.GetName()
	case <-time.After(time.Second):
		return "<nothing>"
	}
}
