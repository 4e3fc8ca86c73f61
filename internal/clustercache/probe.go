package clustercache

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
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

// LivenessResult is what one liveness probe of a member found: whether its apiserver is ready,
// and its identity (the kube-system namespace UID).
type LivenessResult struct {
	// Err is nil when the probe succeeded.
	Err error
	// Reason classifies Err as a MemberCluster condition reason (ClusterNotReachable,
	// Unauthorized, Forbidden, TLSError, APIServerNotReady, ResponseTooLarge, ProbeFailed); empty
	// on success.
	Reason    string
	ClusterID string
	Latency   time.Duration
}

// InventoryResult is what one inventory probe found: version, nodes, capacity.
type InventoryResult struct {
	Err      error
	Reason   string
	Version  string
	Platform string
	Nodes    clustersv1.NodeSummary
	// Capacity and Allocatable sum cpu, memory and pods over nodes.
	Capacity    corev1.ResourceList
	Allocatable corev1.ResourceList
	Latency     time.Duration
}

// Every probe request is sent once (MaxRetries(0)): client-go otherwise retries a GET that met
// EOF or a reset up to ten times, a second apart, so a dead member behind anything that accepts
// and closes connections (a load balancer, a proxy) would hold each probe for its whole timeout.
// The health state machine does the retrying, by re-probing a suspect member quickly.

// ProbeLiveness checks the member's /readyz and reads the kube-system namespace UID (its
// identity) from the apiserver's watch cache, within ctx (give it the health check timeout). It
// uses the probe client: its own rate limiter, 1 MiB per response.
func (a *Accessor) ProbeLiveness(ctx context.Context) LivenessResult {
	start := time.Now()
	var res LivenessResult
	res.ClusterID, res.Err = a.liveness1(ctx)
	res.Latency = time.Since(start)
	if res.Err != nil {
		res.ClusterID = ""
		res.Reason = Classify(res.Err)
	}
	return res
}

func (a *Accessor) liveness1(ctx context.Context) (string, error) {
	body, err := a.liveness.Get().AbsPath("/readyz").MaxRetries(0).DoRaw(ctx)
	if err != nil {
		if statusErr := (apierrors.APIStatus)(nil); errors.As(err, &statusErr) && statusErr.Status().Code == 500 {
			return "", &notReadyError{detail: firstLine(string(body))}
		}
		return "", fmt.Errorf("readyz: %w", err)
	}
	if strings.TrimSpace(string(body)) != "ok" {
		return "", &notReadyError{detail: firstLine(string(body))}
	}
	ns := &corev1.Namespace{}
	if err := a.liveness.Get().Resource("namespaces").Name(metav1.NamespaceSystem).
		Param("resourceVersion", "0").MaxRetries(0).Do(ctx).Into(ns); err != nil {
		return "", fmt.Errorf("reading namespace kube-system: %w", err)
	}
	if ns.UID == "" {
		return "", errors.New("namespace kube-system has no UID")
	}
	return string(ns.UID), nil
}

// ProbeInventory reads the member's version and sums its nodes. The node list comes from the
// apiserver's watch cache (resourceVersion=0: no etcd read, one request however many nodes) as
// protobuf, capped at InventoryMaxResponseBytes.
func (a *Accessor) ProbeInventory(ctx context.Context) InventoryResult {
	start := time.Now()
	res := a.inventory1(ctx)
	res.Latency = time.Since(start)
	if res.Err != nil {
		res.Reason = Classify(res.Err)
	}
	return res
}

func (a *Accessor) inventory1(ctx context.Context) InventoryResult {
	var res InventoryResult
	body, err := a.liveness.Get().AbsPath("/version").MaxRetries(0).DoRaw(ctx)
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

	// Read from the watch cache (resourceVersion=0) and decoded one node at a time into the few
	// fields summed, so a big member costs one node's memory, not the whole list's.
	opts := metav1.ListOptions{ResourceVersion: "0"}
	list, err := a.inventory.Get().Resource("nodes").VersionedParams(&opts, clientgoscheme.ParameterCodec).
		SetHeader("Accept", "application/json").MaxRetries(0).Stream(ctx)
	if err != nil {
		res.Err = fmt.Errorf("listing nodes: %w", err)
		return res
	}
	defer func() { _ = list.Close() }()
	capacity, allocatable := corev1.ResourceList{}, corev1.ResourceList{}
	err = eachNode(list, func(n *nodeFields) {
		res.Nodes.Total++
		for _, c := range n.Status.Conditions {
			if c.Type == string(corev1.NodeReady) {
				if c.Status == string(corev1.ConditionTrue) {
					res.Nodes.Ready++
				}
				break
			}
		}
		addResources(capacity, n.Status.Capacity)
		addResources(allocatable, n.Status.Allocatable)
	})
	if err != nil {
		res.Err = fmt.Errorf("listing nodes: %w", err)
		return res
	}
	res.Capacity, res.Allocatable = capacity, allocatable
	return res
}

// nodeFields are the parts of a Node the inventory reads. Quantities stay strings until they are
// checked (see parseSane).
type nodeFields struct {
	Status struct {
		Capacity    map[string]string `json:"capacity"`
		Allocatable map[string]string `json:"allocatable"`
		Conditions  []struct {
			Type   string `json:"type"`
			Status string `json:"status"`
		} `json:"conditions"`
	} `json:"status"`
}

// eachNode decodes a NodeList's items one at a time and calls f for each.
func eachNode(r io.Reader, f func(*nodeFields)) error {
	dec := json.NewDecoder(r)
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return fmt.Errorf("not a NodeList (%v)", err)
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if key, _ := tok.(string); key != "items" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return err
			}
			continue
		}
		if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
			if err == nil && tok == nil {
				continue // "items": null
			}
			return fmt.Errorf("items is not a list (%v)", err)
		}
		for dec.More() {
			var n nodeFields
			if err := dec.Decode(&n); err != nil {
				return err
			}
			f(&n)
		}
		if _, err := dec.Token(); err != nil {
			return err
		}
	}
	return nil
}

var summedResources = []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory, corev1.ResourcePods}

func addResources(sum corev1.ResourceList, add map[string]string) {
	for _, name := range summedResources {
		v, ok := add[string(name)]
		if !ok {
			continue
		}
		q, ok := parseSane(v)
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

// parseSane parses a quantity a member reported, refusing before parsing what could be costly:
// resource.ParseQuantity rounds "1e999999999" by rescaling it, a number of hundreds of megabytes.
func parseSane(v string) (resource.Quantity, bool) {
	if len(v) > 32 {
		return resource.Quantity{}, false
	}
	if i := strings.IndexAny(v, "eE"); i >= 0 {
		if rest := v[i+1:]; rest != "" && rest != "i" { // "E" and "Ei" are suffixes
			exp, err := strconv.Atoi(rest)
			if err != nil || exp > 18 || exp < -18 {
				return resource.Quantity{}, false
			}
		}
	}
	q, err := resource.ParseQuantity(v)
	if err != nil || !sane(q) {
		return resource.Quantity{}, false
	}
	return q, true
}

// sane reports whether q is a quantity a node could have: at most 10^18 and no finer than 10^-18.
// It is checked without computing with q: a hostile member can report "1e999999999", which adding
// to "1" would expand into a number of hundreds of megabytes.
func sane(q resource.Quantity) bool {
	d := q.AsDec()
	scale := int64(d.Scale())
	// Decimal digits of the unscaled value, from its bit length (never printing it).
	digits := int64(float64(d.UnscaledBig().BitLen())*0.30103) + 1
	return scale <= 18 && scale >= -18 && digits-scale <= 19
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
	if errors.Is(err, ErrResponseTooLarge) {
		return clustersv1.ReasonResponseTooLarge
	}
	if errors.Is(err, ErrRedirectRefused) {
		return clustersv1.ReasonRedirectRefused
	}
	if apierrors.IsUnauthorized(err) {
		return clustersv1.ReasonUnauthorized
	}
	if apierrors.IsForbidden(err) {
		return clustersv1.ReasonForbidden
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
