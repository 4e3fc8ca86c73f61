package membercluster

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
)

// maxConditionMessage stays well below the CRD's 32768 bound on condition messages.
const maxConditionMessage = 4096

// ModeAttach is status.mode for spec.attach.
const ModeAttach = "Attach"

// computeStatus is the only place that computes MemberCluster conditions.
func computeStatus(s *scope) {
	mc := s.mc
	st := &mc.Status
	gen := mc.Generation
	set := func(t string, status metav1.ConditionStatus, reason, msg string) {
		if len(msg) > maxConditionMessage {
			msg = msg[:maxConditionMessage-3] + "..."
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: t, Status: status, Reason: reason, Message: msg, ObservedGeneration: gen,
		})
	}
	if mc.Spec.Attach != nil {
		st.Mode = ModeAttach
	}

	if s.paused {
		set(clustersv1.ReadyCondition, metav1.ConditionUnknown, clustersv1.ReasonPaused,
			"Reconciliation is paused (spec.paused); status is not being updated and no controller acts on this member")
		meta.RemoveStatusCondition(&st.Conditions, clustersv1.ReconcilingCondition)
		meta.RemoveStatusCondition(&st.Conditions, clustersv1.StalledCondition)
		st.ObservedGeneration = gen
		return
	}

	if pe := s.kubeconfigErr; pe != nil {
		set(clustersv1.KubeconfigValidCondition, metav1.ConditionFalse, pe.Reason, pe.Message)
		set(clustersv1.ReachableCondition, metav1.ConditionUnknown, pe.Reason, "Not probed: the kubeconfig is not usable")
		set(clustersv1.ReadyCondition, metav1.ConditionFalse, pe.Reason, "The kubeconfig is not usable: "+pe.Message)
		set(clustersv1.StalledCondition, metav1.ConditionTrue, pe.Reason, "Fix the kubeconfig Secret: "+pe.Message)
		meta.RemoveStatusCondition(&st.Conditions, clustersv1.ReconcilingCondition)
		st.ObservedGeneration = gen
		return
	}
	if !s.connected {
		// A transient error (reading the Secret failed): keep the last status; the error is retried.
		return
	}

	set(clustersv1.KubeconfigValidCondition, metav1.ConditionTrue, clustersv1.ReasonValid, "The kubeconfig passed the policy")
	st.APIEndpoint = s.endpoint

	h := s.health
	st.LastProbeTime = timePtr(h.LastProbe)
	st.LastSuccessfulProbeTime = timePtr(h.LastSuccess)
	st.ConsecutiveFailures = h.ConsecutiveFailures
	st.ConsecutiveSuccesses = min(h.ConsecutiveSuccesses, mc.Spec.HealthCheck.GetSuccessThreshold())

	if p := s.inv; p != nil && s.verified {
		st.KubernetesVersion = p.Version
		st.Platform = p.Platform
		nodes := p.Nodes
		st.Nodes = &nodes
		st.Capacity = summary(p.Capacity)
		st.Allocatable = summary(p.Allocatable)
	}

	hc := mc.Spec.HealthCheck
	switch {
	case h.Healthy && h.ConsecutiveFailures > 0:
		set(clustersv1.ReachableCondition, metav1.ConditionTrue, clustersv1.ReasonReachable,
			fmt.Sprintf("Reachable, but the last %d probe(s) failed (%s); Ready turns False after %s without a successful probe",
				h.ConsecutiveFailures, h.LastFailureReason, hc.GetUnhealthyAfter()))
	case h.Healthy:
		set(clustersv1.ReachableCondition, metav1.ConditionTrue, clustersv1.ReasonReachable, "The member's apiserver answers and reports ready")
	case h.ConsecutiveFailures > 0 || h.LastFailureReason != "" && h.ConsecutiveSuccesses == 0:
		set(clustersv1.ReachableCondition, metav1.ConditionFalse, h.LastFailureReason, failureMessage(h))
	case h.LastFailureReason != "":
		set(clustersv1.ReachableCondition, metav1.ConditionFalse, h.LastFailureReason,
			fmt.Sprintf("Recovering: %d of %d consecutive successful probes needed; last failure: %s",
				h.ConsecutiveSuccesses, hc.GetSuccessThreshold(), h.LastFailureMsg))
	default:
		set(clustersv1.ReachableCondition, metav1.ConditionUnknown, clustersv1.ReasonProgressing,
			fmt.Sprintf("Attaching: %d of %d consecutive successful probes needed", h.ConsecutiveSuccesses, hc.GetSuccessThreshold()))
	}

	reachable := meta.FindStatusCondition(st.Conditions, clustersv1.ReachableCondition)
	// unproven: nothing through the current connection has confirmed the member's identity yet,
	// while the verdict (carried over from the last connection, or from status after a restart)
	// is still healthy. Ready is not (re)confirmed from such a connection.
	unproven := h.Healthy && !s.verified
	pendingMsg := "Probing the member through its new connection (the kubeconfig Secret changed, the member was unpaused or its kubeconfig was fixed); " +
		"no controller acts on it until a probe confirms its identity"
	if s.probedConn && unproven && h.LastFailureMsg != "" {
		pendingMsg = fmt.Sprintf("No probe through the new connection has succeeded yet (%s: %s); Ready turns False after %s without a successful probe",
			h.LastFailureReason, strings.TrimSuffix(h.LastFailureMsg, "."), hc.GetUnhealthyAfter())
	}
	removeProgress := func() {
		meta.RemoveStatusCondition(&st.Conditions, clustersv1.ReconcilingCondition)
		meta.RemoveStatusCondition(&st.Conditions, clustersv1.StalledCondition)
	}
	switch {
	case s.state.identityMismatch == seededMismatch:
		// Stalled with ClusterIdentityChanged when the manager last ran, and no probe has read the
		// identity since: keep saying so.
	case s.state.identityMismatch != "":
		msg := fmt.Sprintf("The kubeconfig now reaches a different cluster (kube-system UID %s, expected %s). No controller acts on this member until a person confirms: "+
			"kubectl annotate membercluster %s %s=%s --overwrite",
			s.state.identityMismatch, st.ClusterID, mc.Name, clustersv1.AcceptClusterIDAnnotation, s.state.identityMismatch)
		set(clustersv1.ReadyCondition, metav1.ConditionFalse, clustersv1.ReasonClusterIdentityChanged, msg)
		set(clustersv1.StalledCondition, metav1.ConditionTrue, clustersv1.ReasonClusterIdentityChanged, msg)
		meta.RemoveStatusCondition(&st.Conditions, clustersv1.ReconcilingCondition)
	case unproven && s.replaced:
		if meta.FindStatusCondition(st.Conditions, clustersv1.ReadyCondition) == nil {
			set(clustersv1.ReadyCondition, metav1.ConditionFalse, clustersv1.ReasonProbePending, pendingMsg)
		}
		set(clustersv1.ReconcilingCondition, metav1.ConditionTrue, clustersv1.ReasonProbePending, pendingMsg)
		meta.RemoveStatusCondition(&st.Conditions, clustersv1.StalledCondition)
	case unproven:
		// The first connection after a manager restart: status already says what the last
		// manager knew, and rewriting it for every member would cost a write per member per
		// restart. Other controllers still wait for the probe (the cache is not admitted).
		if meta.FindStatusCondition(st.Conditions, clustersv1.ReadyCondition) == nil {
			set(clustersv1.ReadyCondition, metav1.ConditionFalse, clustersv1.ReasonProbePending, pendingMsg)
			set(clustersv1.ReconcilingCondition, metav1.ConditionTrue, clustersv1.ReasonProbePending, pendingMsg)
		}
	case h.Healthy:
		set(clustersv1.ReadyCondition, metav1.ConditionTrue, clustersv1.ReasonReady, readyMessage(st))
		removeProgress()
	case reachable.Status == metav1.ConditionUnknown:
		set(clustersv1.ReadyCondition, metav1.ConditionFalse, clustersv1.ReasonProgressing, reachable.Message)
		set(clustersv1.ReconcilingCondition, metav1.ConditionTrue, clustersv1.ReasonProgressing, reachable.Message)
		meta.RemoveStatusCondition(&st.Conditions, clustersv1.StalledCondition)
	default:
		set(clustersv1.ReadyCondition, metav1.ConditionFalse, reachable.Reason, reachable.Message)
		removeProgress()
	}
	if s.hcPending && s.state.identityMismatch == "" {
		set(clustersv1.ReconcilingCondition, metav1.ConditionTrue, clustersv1.ReasonProbePending,
			"Probing the member with the new spec.healthCheck settings")
	}
	st.ObservedGeneration = gen
}

func failureMessage(h health) string {
	hint := ""
	switch h.LastFailureReason {
	case clustersv1.ReasonClusterNotReachable:
		hint = " Check that the server in the kubeconfig is up and reachable from the management cluster."
	case clustersv1.ReasonUnauthorized:
		hint = " The member rejected the credentials: rotate the token or certificate in the kubeconfig Secret."
	case clustersv1.ReasonForbidden:
		hint = " The member denied a request Paddock needs: grant the member-side RBAC listed in docs/membercluster.md."
	case clustersv1.ReasonResponseTooLarge:
		hint = " The member sent a response larger than Paddock accepts."
	case clustersv1.ReasonTLSError:
		hint = " Check certificate-authority-data and tls-server-name in the kubeconfig."
	case clustersv1.ReasonAPIServerNotReady:
		hint = " The member's apiserver answers but is not ready; check its /readyz."
	}
	return fmt.Sprintf("No successful probe since %s (%d consecutive failures): %s.%s",
		formatTime(h.LastSuccess), h.ConsecutiveFailures, strings.TrimSuffix(h.LastFailureMsg, "."), hint)
}

func readyMessage(st *clustersv1.MemberClusterStatus) string {
	nodes := "no nodes"
	if st.Nodes != nil && st.Nodes.Total > 0 {
		nodes = fmt.Sprintf("%d/%d nodes ready", st.Nodes.Ready, st.Nodes.Total)
	}
	return fmt.Sprintf("Kubernetes %s is ready, %s", st.KubernetesVersion, nodes)
}

func summary(rl corev1.ResourceList) *clustersv1.ResourceSummary {
	if len(rl) == 0 {
		return nil
	}
	pick := func(n corev1.ResourceName) *resource.Quantity {
		q, ok := rl[n]
		if !ok {
			return nil
		}
		q = resource.MustParse(q.String()) // canonical form, so equal sums compare equal
		return &q
	}
	return &clustersv1.ResourceSummary{CPU: pick(corev1.ResourceCPU), Memory: pick(corev1.ResourceMemory), Pods: pick(corev1.ResourcePods)}
}

func updateMetrics(s *scope) {
	name := s.mc.Name
	ready := meta.IsStatusConditionTrue(s.mc.Status.Conditions, clustersv1.ReadyCondition)
	v := 0.0
	if ready {
		v = 1
	}
	readyGauge.WithLabelValues(name).Set(v)
	if n := s.mc.Status.Nodes; n != nil {
		nodesGauge.WithLabelValues(name, "total").Set(float64(n.Total))
		nodesGauge.WithLabelValues(name, "ready").Set(float64(n.Ready))
	}
}
