package clustercache

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/version"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
)

// ProbeResult is what one health probe of a member found.
type ProbeResult struct {
	// Err is nil when the probe succeeded.
	Err error
	// Reason classifies Err as a MemberCluster condition reason (ClusterNotReachable,
	// Unauthorized, TLSError, APIServerNotReady, ProbeFailed); empty on success.
	Reason string

	Version   string
	Platform  string
	ClusterID string
	Nodes     clustersv1.NodeSummary
	// Capacity and Allocatable sum cpu, memory and pods over nodes.
	Capacity    corev1.ResourceList
	Allocatable corev1.ResourceList
	Latency     time.Duration
}

// nodePageSize bounds one page of the node list.
const nodePageSize = 500

// Probe checks the member's /readyz, reads its version, the kube-system namespace UID (its
// identity) and sums its nodes, all within ctx (give it the health check timeout).
func (a *Accessor) Probe(ctx context.Context) ProbeResult {
	start := time.Now()
	res := a.probe(ctx)
	res.Latency = time.Since(start)
	if res.Err != nil {
		res.Reason = Classify(res.Err)
	}
	return res
}

// Every probe request is sent once (MaxRetries(0)): client-go otherwise retries a GET that met
// EOF or a reset up to ten times, a second apart, so a dead member behind anything that accepts
// and closes connections (a load balancer, a proxy) would hold each probe for its whole timeout.
// The health state machine does the retrying, by re-probing a suspect member quickly.
func (a *Accessor) probe(ctx context.Context) ProbeResult {
	var res ProbeResult
	disc := a.Kubernetes.Discovery().RESTClient()
	core := a.Kubernetes.CoreV1().RESTClient()
	body, err := disc.Get().AbsPath("/readyz").MaxRetries(0).DoRaw(ctx)
	if err != nil {
		if statusErr := (apierrors.APIStatus)(nil); errors.As(err, &statusErr) && statusErr.Status().Code == 500 {
			res.Err = &notReadyError{detail: firstLine(string(body))}
			return res
		}
		res.Err = fmt.Errorf("readyz: %w", err)
		return res
	}
	if strings.TrimSpace(string(body)) != "ok" {
		res.Err = &notReadyError{detail: firstLine(string(body))}
		return res
	}
	body, err = disc.Get().AbsPath("/version").MaxRetries(0).DoRaw(ctx)
	if err != nil {
		res.Err = fmt.Errorf("version: %w", err)
		return res
	}
	var v version.Info
	if err := json.Unmarshal(body, &v); err != nil {
		res.Err = fmt.Errorf("version: %w", err)
		return res
	}
	res.Version, res.Platform = v.GitVersion, v.Platform
	ns := &corev1.Namespace{}
	if err := core.Get().Resource("namespaces").Name(metav1.NamespaceSystem).MaxRetries(0).Do(ctx).Into(ns); err != nil {
		res.Err = fmt.Errorf("reading namespace kube-system: %w", err)
		return res
	}
	res.ClusterID = string(ns.UID)

	capacity, allocatable := corev1.ResourceList{}, corev1.ResourceList{}
	opts := metav1.ListOptions{Limit: nodePageSize}
	for {
		nodes := &corev1.NodeList{}
		err := core.Get().Resource("nodes").VersionedParams(&opts, clientgoscheme.ParameterCodec).MaxRetries(0).Do(ctx).Into(nodes)
		if err != nil {
			res.Err = fmt.Errorf("listing nodes: %w", err)
			return res
		}
		for i := range nodes.Items {
			n := &nodes.Items[i]
			res.Nodes.Total++
			if nodeReady(n) {
				res.Nodes.Ready++
			}
			addResources(capacity, n.Status.Capacity)
			addResources(allocatable, n.Status.Allocatable)
		}
		if nodes.Continue == "" {
			break
		}
		opts.Continue = nodes.Continue
	}
	res.Capacity, res.Allocatable = capacity, allocatable
	return res
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

var summedResources = []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory, corev1.ResourcePods}

func addResources(sum, add corev1.ResourceList) {
	for _, name := range summedResources {
		q, ok := add[name]
		if !ok {
			continue
		}
		cur, ok := sum[name]
		if !ok {
			cur = resource.Quantity{Format: q.Format}
		}
		cur.Add(q)
		sum[name] = cur
	}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

type notReadyError struct{ detail string }

func (e *notReadyError) Error() string {
	if e.detail == "" {
		return "the member's /readyz is not ok"
	}
	return "the member's /readyz is not ok: " + e.detail
}

// Classify turns a probe error into a MemberCluster condition reason.
func Classify(err error) string {
	if err == nil {
		return ""
	}
	var nr *notReadyError
	if errors.As(err, &nr) {
		return clustersv1.ReasonAPIServerNotReady
	}
	if apierrors.IsUnauthorized(err) || apierrors.IsForbidden(err) {
		return clustersv1.ReasonUnauthorized
	}
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostname         x509.HostnameError
		certInvalid      x509.CertificateInvalidError
		verifyErr        *tls.CertificateVerificationError
		recordHeader     tls.RecordHeaderError
		alert            tls.AlertError
	)
	if errors.As(err, &unknownAuthority) || errors.As(err, &hostname) || errors.As(err, &certInvalid) ||
		errors.As(err, &verifyErr) || errors.As(err, &recordHeader) || errors.As(err, &alert) {
		return clustersv1.ReasonTLSError
	}
	// client-go flattens some TLS errors into strings.
	msg := err.Error()
	if strings.Contains(msg, "x509:") || strings.Contains(msg, "tls:") {
		return clustersv1.ReasonTLSError
	}
	var netErr net.Error
	var opErr *net.OpError
	var dnsErr *net.DNSError
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.As(err, &netErr) || errors.As(err, &opErr) || errors.As(err, &dnsErr) ||
		apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err) || apierrors.IsServiceUnavailable(err) ||
		strings.Contains(msg, "connection refused") || strings.Contains(msg, "EOF") ||
		strings.Contains(msg, "connection reset") || strings.Contains(msg, "refusing to dial") {
		return clustersv1.ReasonClusterNotReachable
	}
	return clustersv1.ReasonProbeFailed
}
