package membercluster

import (
	"context"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/event"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/internal/clustercache"
)

// The prober probes each active member on its own schedule: a timer per member (no goroutine
// while it waits), one liveness probe in flight per member, and slots bounding the probes in
// flight overall. A hung member holds only its own probe, never a reconcile worker. After each
// probe it folds the result into the member's health and requeues the MemberCluster only when
// something that status shows changed (or the status heartbeat is due), so a quiet fleet costs no
// reconciles.
//
// Every result belongs to the connection (Accessor) it was taken through: a result that comes
// back after the connection was replaced is discarded, and a new connection is probed at once.
//
// Fairness: members whose last probe failed take their slots from a small pool of their own (a
// fifth of the slots), and any probe that has held a slot for longer than slotHold gives it back
// while it goes on, so members that hang can never keep healthy ones waiting.
//
// The inventory (version, nodes, capacity) is read on its own, slower cadence, in the background
// with its own small pool, so a big member's node list never delays its liveness probe.

// slotHold is how long a probe may hold a slot before it goes on without one.
const slotHold = time.Second

// probeSlots bounds the probes that are in flight and younger than slotHold.
type probeSlots struct {
	healthy chan struct{}
	failing chan struct{}
}

func newProbeSlots(n int) *probeSlots {
	return &probeSlots{healthy: make(chan struct{}, n), failing: make(chan struct{}, max(1, n/5))}
}

// acquire takes a slot from the pool for a member whose last probe failed (failing) or not, and
// returns its release, which is safe to call more than once.
func (p *probeSlots) acquire(ctx context.Context, failing bool) (func(), bool) {
	pool := p.healthy
	if failing {
		pool = p.failing
	}
	select {
	case pool <- struct{}{}:
	case <-ctx.Done():
		return nil, false
	}
	var once sync.Once
	return func() { once.Do(func() { <-pool }) }, true
}

// activate points the prober at the member's current connection and settings. A new connection
// or changed settings are probed at once.
func (r *Reconciler) activate(name string, st *memberState, acc *clustercache.Accessor, hc clustersv1.HealthCheckSpec) {
	st.mu.Lock()
	defer st.mu.Unlock()
	connChanged := st.acc != acc
	hcChanged := st.acc != nil && !sameHealthCheck(st.hc, hc)
	if connChanged {
		if st.acc != nil || st.everConnected {
			// A replaced connection proves nothing about the new one.
			st.replaced = true
		}
		st.everConnected = true
		st.live, st.inv = nil, nil
		st.probedConn = false
		st.flippedID = ""
	}
	if hcChanged {
		st.hcPending = true
	}
	wasActive := st.active
	st.acc, st.hc, st.active = acc, hc, true
	if connChanged || hcChanged || !wasActive {
		r.schedule(name, st, 0)
		return
	}
	if st.inFlight || st.timer != nil {
		return
	}
	r.schedule(name, st, st.health.nextProbeAt(hc, st.lastStart).Sub(r.Clock.Now()))
}

// schedule (st.mu held) replaces any scheduled probe with one after delay. While a probe is in
// flight it only asks that one to schedule the next at once.
func (r *Reconciler) schedule(name string, st *memberState, delay time.Duration) {
	st.epoch++
	if st.timer != nil {
		st.timer.Stop()
		st.timer = nil
	}
	if st.inFlight {
		st.probeNow = delay <= 0
		return
	}
	epoch := st.epoch
	st.timer = r.Clock.AfterFunc(max(delay, 0), func() { r.runProbe(name, st, epoch) })
}

// deactivate stops probing the member.
func deactivate(st *memberState) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.active = false
	st.epoch++
	if st.timer != nil {
		st.timer.Stop()
		st.timer = nil
	}
}

func (r *Reconciler) runProbe(name string, st *memberState, epoch uint64) {
	st.mu.Lock()
	// A timer that fired while the member was deactivated and re-activated belongs to an old
	// epoch: only the newest schedule may start a probe, so one member has one probe chain.
	if st.epoch != epoch || !st.active || st.inFlight || r.ctx.Err() != nil {
		st.mu.Unlock()
		return
	}
	st.timer = nil
	acc, hc := st.acc, st.hc
	st.inFlight, st.probeNow = true, false
	st.lastStart = r.Clock.Now()
	timeout := probeTimeout(st.health, hc, st.lastStart)
	failing := st.health.ConsecutiveFailures > 0 && st.probedConn
	st.mu.Unlock()

	waitStart := r.Clock.Now()
	release, ok := r.slots.acquire(r.ctx, failing)
	wait := r.Clock.Since(waitStart)
	slotWait.Observe(wait.Seconds())
	st.mu.Lock()
	// Paused, deleted or re-pointed while waiting for the slot: do not contact it.
	stale := !st.active || st.acc != acc
	if !ok || stale {
		st.inFlight = false
		if ok && st.active {
			r.schedule(name, st, 0)
		}
		st.mu.Unlock()
		if ok {
			release()
		}
		return
	}
	st.mu.Unlock()
	hold := r.Clock.AfterFunc(slotHold, release)
	ctx, cancel := context.WithTimeout(r.ctx, timeout)
	res := acc.ProbeLiveness(ctx)
	cancel()
	hold.Stop()
	release()

	st.mu.Lock()
	st.inFlight = false
	st.maxSlotWait = max(st.maxSlotWait, wait)
	if st.acc != acc {
		// The connection was replaced while this probe ran: its result says nothing about the new
		// one. activate has asked for a probe of the new connection; start it now.
		probesDiscarded.Inc()
		if st.active {
			r.schedule(name, st, 0)
		}
		st.mu.Unlock()
		return
	}
	if res.Err != nil {
		probesTotal.WithLabelValues(res.Reason).Inc()
	} else {
		probesTotal.WithLabelValues("success").Inc()
	}
	msg := ""
	if res.Err != nil {
		// A member controls its error text: bound it before it reaches status, events or logs.
		msg = sanitizeMessage(res.Err.Error())
	}
	prev, prevRes, firstOnConn, hcPending := st.health, st.live, !st.probedConn, st.hcPending
	st.health = st.health.observe(r.Clock.Now(), res.Err == nil, res.Reason, msg, hc)
	st.live = &res
	st.probedConn = true
	if sameHealthCheck(hc, st.hc) {
		st.hcPending = false
	}
	if res.Err == nil {
		// A different cluster behind an admitted connection (a DNS or load balancer flip): take
		// it away now, not when a reconcile gets to it. Under st.mu, so a concurrent admission
		// (which checks st.live under st.mu) cannot slip past.
		// Only for the member's current connection: a probe of a MemberCluster that was deleted
		// (or forgotten) while it ran must not revoke a new one of the same name.
		if st.active {
			r.Cache.RevokeFlipped(acc, res.ClusterID)
		}
		switch {
		case st.pinnedID == "":
		case res.ClusterID != st.pinnedID:
			st.flippedID = res.ClusterID
		default:
			st.flippedID = ""
		}
	}
	h := st.health
	publish := firstOnConn || hcPending || visibleChange(prev, h) || livenessChanged(prevRes, &res) ||
		r.Clock.Since(st.lastPublished) >= r.heartbeat(st.uid)
	// Inventory only from the pinned cluster: a member whose identity changed must not show the
	// other cluster's version and nodes.
	invDue := res.Err == nil && (st.pinnedID == "" || st.pinnedID == res.ClusterID) && !st.invInFlight &&
		(st.inv == nil || r.Clock.Since(st.invStart) >= hc.GetInventoryInterval())
	if invDue {
		st.invInFlight = true
		st.invStart = r.Clock.Now()
	}
	if st.active {
		next := h.nextProbeAt(hc, st.lastStart).Sub(r.Clock.Now())
		if st.probeNow {
			next = 0
		}
		r.schedule(name, st, next)
	}
	if st.active {
		// Under the lock, so a member forgotten meanwhile does not get its series back.
		now := float64(r.Clock.Now().UnixMilli()) / 1000
		lastProbeGauge.WithLabelValues(name).Set(now)
		if res.Err == nil {
			lastSuccessGauge.WithLabelValues(name).Set(now)
		}
		probeLatency.WithLabelValues(name).Set(res.Latency.Seconds())
	}
	st.mu.Unlock()

	if invDue {
		go r.runInventory(name, st, acc, hc)
	}
	r.log.V(1).Info("Probed member", "member", name, "ok", res.Err == nil, "reason", res.Reason, "detail", msg,
		"latency", res.Latency, "healthy", h.Healthy, "failures", h.ConsecutiveFailures, "publish", publish)
	if publish {
		r.requeue(name)
	}
}

// inventoryTimeout bounds one inventory read: a big member's node list takes longer than a
// liveness probe, and nothing waits for it.
func inventoryTimeout(hc clustersv1.HealthCheckSpec) time.Duration {
	return min(max(3*hc.GetTimeout(), 30*time.Second), 2*time.Minute)
}

func (r *Reconciler) runInventory(name string, st *memberState, acc *clustercache.Accessor, hc clustersv1.HealthCheckSpec) {
	done := func() {
		st.mu.Lock()
		st.invInFlight = false
		st.mu.Unlock()
	}
	select {
	case r.inventorySlots <- struct{}{}:
	case <-r.ctx.Done():
		done()
		return
	}
	st.mu.Lock()
	stale := !st.active || st.acc != acc
	st.mu.Unlock()
	if stale {
		<-r.inventorySlots
		done()
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, inventoryTimeout(hc))
	res := acc.ProbeInventory(ctx)
	cancel()
	<-r.inventorySlots

	st.mu.Lock()
	st.invInFlight = false
	if st.acc != acc {
		st.mu.Unlock()
		probesDiscarded.Inc()
		return
	}
	if res.Err != nil {
		st.invErr = sanitizeMessage(res.Err.Error())
		st.mu.Unlock()
		inventoryTotal.WithLabelValues(res.Reason).Inc()
		r.log.Info("Could not read the member's inventory; keeping the last one", "member", name, "reason", res.Reason, "detail", st.invErr)
		return
	}
	inventoryTotal.WithLabelValues("success").Inc()
	changed := inventoryChanged(st.inv, &res)
	st.inv, st.invErr = &res, ""
	st.mu.Unlock()
	if changed {
		r.requeue(name)
	}
}

func (r *Reconciler) requeue(name string) {
	select {
	case r.probeDone <- event.GenericEvent{Object: &clustersv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: name}}}:
	case <-r.ctx.Done():
	}
}

// minProbeTimeout is the shortest deadline a probe gets.
const minProbeTimeout = 200 * time.Millisecond

// probeTimeout is the probe's timeout, cut short for a healthy member when its unhealthyAfter
// window ends sooner: a probe still running then has not succeeded, so waiting out a long timeout
// would only delay detecting a hung member (to unhealthyAfter + timeout).
func probeTimeout(h health, hc clustersv1.HealthCheckSpec, now time.Time) time.Duration {
	timeout := hc.GetTimeout()
	if !h.Healthy || h.LastSuccess.IsZero() {
		return timeout
	}
	if left := hc.GetUnhealthyAfter() - now.Sub(h.LastSuccess); left < timeout {
		timeout = max(left, minProbeTimeout)
	}
	return timeout
}

// visibleChange tells whether the health verdict changed in a way the conditions show.
func visibleChange(prev, cur health) bool {
	switch {
	case prev.Healthy != cur.Healthy,
		(prev.ConsecutiveFailures > 0) != (cur.ConsecutiveFailures > 0),
		prev.LastFailureReason != cur.LastFailureReason:
		return true
	case !cur.Healthy && prev.ConsecutiveSuccesses != cur.ConsecutiveSuccesses:
		// Not the failure message: it may differ on every probe (a local port, a request ID),
		// and would cost a status write per probe. It is published with the next change or
		// heartbeat.
		return true
	}
	return false
}

// livenessChanged tells whether a liveness probe found different data than the one before.
func livenessChanged(prev, cur *clustercache.LivenessResult) bool {
	if prev == nil || (prev.Err == nil) != (cur.Err == nil) {
		return true
	}
	return cur.Err == nil && prev.ClusterID != cur.ClusterID
}

// inventoryChanged tells whether an inventory differs from the one before.
func inventoryChanged(prev, cur *clustercache.InventoryResult) bool {
	if prev == nil {
		return true
	}
	return prev.Version != cur.Version || prev.Platform != cur.Platform ||
		prev.Nodes != cur.Nodes || !sameResources(prev.Capacity, cur.Capacity) || !sameResources(prev.Allocatable, cur.Allocatable)
}

func sameResources(a, b corev1.ResourceList) bool {
	if len(a) != len(b) {
		return false
	}
	for name, qa := range a {
		qb, ok := b[name]
		if !ok || qa.Cmp(qb) != 0 {
			return false
		}
	}
	return true
}

func sameHealthCheck(a, b clustersv1.HealthCheckSpec) bool {
	return a.GetPeriod() == b.GetPeriod() && a.GetTimeout() == b.GetTimeout() &&
		a.GetUnhealthyAfter() == b.GetUnhealthyAfter() && a.GetSuccessThreshold() == b.GetSuccessThreshold() &&
		a.GetInventoryInterval() == b.GetInventoryInterval()
}

// maxMessage bounds any text a member controls (error messages) before it is kept.
const maxMessage = 512

// sanitizeMessage keeps the first maxMessage bytes of msg, with control characters replaced.
func sanitizeMessage(msg string) string {
	if len(msg) > maxMessage {
		cut := maxMessage
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut] + "..."
	}
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return ' '
		}
		return r
	}, msg)
}
