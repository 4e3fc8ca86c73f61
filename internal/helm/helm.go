// Package helm runs Helm SDK actions in a member cluster through the access layer: every action
// uses the member's shared, policy-checked transport (clustercache.Accessor.RESTClientGetter),
// stores releases as Secrets in the release namespace (Helm's default driver), never reads a
// kubeconfig, HOME or the environment, and never writes to disk.
package helm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/go-logr/logr"
	yamlv3 "go.yaml.in/yaml/v3"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/storage/driver"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/paddock-dev/paddock/internal/clustercache"
)

// OwnerLabel is the Helm release label (stored on the release Secret) naming the PluginRelease
// that installed it, as "<namespace>/<name>" is not a label value: "<namespace>.<name>".
const OwnerLabel = "plugins.paddock.dev/owner"

// ChartLabel labels a release record with the archive digest of the chart it was made from
// (128 bits of its sha256 in hex), so that a release already running the desired chart and values
// is recognised without another Helm revision.
const ChartLabel = "plugins.paddock.dev/chart"

// ChartLabelValue is ChartLabel's value for an archive digest "sha256:<hex>".
func ChartLabelValue(digest string) string {
	d := strings.TrimPrefix(digest, "sha256:")
	if len(d) > 32 {
		d = d[:32]
	}
	return d
}

// ReleaseLabel is put on every object of a release (by a post-renderer), so that drift detection
// can watch a release's objects with a label selector. Its value is ReleaseLabelValue.
const ReleaseLabel = "plugins.paddock.dev/release"

// ReleaseLabelValue identifies a release (namespace and name) within a member, in a label value's
// 63 characters.
func ReleaseLabelValue(namespace, name string) string {
	sum := sha256.Sum256([]byte(namespace + "/" + name))
	return "r" + hex.EncodeToString(sum[:])[:20]
}

// labeller is the post-renderer that adds ReleaseLabel to every rendered object.
type labeller struct{ value string }

// Run works on the YAML node tree, not on decoded values: numbers, quoting, key order and
// comments stay exactly as the chart rendered them (a decode to map[string]any and back turned
// every number into a float64, so an integer beyond 2^53 changed).
func (l labeller) Run(in *bytes.Buffer) (*bytes.Buffer, error) {
	dec := yamlv3.NewDecoder(bytes.NewReader(in.Bytes()))
	out := &bytes.Buffer{}
	for {
		var doc yamlv3.Node
		if err := dec.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("post-rendering: %w", err)
		}
		if len(doc.Content) == 0 || doc.Content[0].Kind == yamlv3.ScalarNode && doc.Content[0].Tag == "!!null" {
			continue // an empty document
		}
		root := doc.Content[0]
		if root.Kind != yamlv3.MappingNode {
			return nil, fmt.Errorf("post-rendering: a rendered document is not an object (YAML line %d)", root.Line)
		}
		var node any = &doc
		if md, ok := mappingAt(root, "metadata"); ok {
			if labels, ok := mappingAt(md, "labels"); ok {
				setScalar(labels, ReleaseLabel, l.value)
			} else {
				node = nil
			}
		} else {
			node = nil
		}
		if node == nil {
			// metadata or its labels come from an alias or a merge key: labelled on the decoded
			// object instead (yaml.v3 keeps integers as integers), so that the label neither
			// lands in every other place the anchor is used nor hides merged labels.
			m := map[string]any{}
			if err := doc.Decode(&m); err != nil {
				return nil, fmt.Errorf("post-rendering: %w", err)
			}
			md, _ := m["metadata"].(map[string]any)
			if md == nil {
				md = map[string]any{}
				m["metadata"] = md
			}
			labels, _ := md["labels"].(map[string]any)
			if labels == nil {
				labels = map[string]any{}
				md["labels"] = labels
			}
			labels[ReleaseLabel] = l.value
			node = m
		}
		out.WriteString("---\n")
		enc := yamlv3.NewEncoder(out)
		enc.SetIndent(2)
		if err := enc.Encode(node); err != nil {
			return nil, fmt.Errorf("post-rendering: %w", err)
		}
		if err := enc.Close(); err != nil {
			return nil, fmt.Errorf("post-rendering: %w", err)
		}
	}
}

// mappingAt returns the mapping under key in m, making one if the key is missing or null. It
// refuses (false) where the mapping is an alias or m or it holds a merge key ("<<").
func mappingAt(m *yamlv3.Node, key string) (*yamlv3.Node, bool) {
	if hasMergeKey(m) {
		return nil, false
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value != key {
			continue
		}
		switch v := m.Content[i+1]; {
		case v.Kind == yamlv3.MappingNode && v.Anchor == "" && !hasMergeKey(v):
			return v, true
		case v.Kind == yamlv3.ScalarNode && v.Tag == "!!null":
			fresh := &yamlv3.Node{Kind: yamlv3.MappingNode, Tag: "!!map"}
			m.Content[i+1] = fresh
			return fresh, true
		default:
			return nil, false
		}
	}
	fresh := &yamlv3.Node{Kind: yamlv3.MappingNode, Tag: "!!map"}
	m.Content = append(m.Content, &yamlv3.Node{Kind: yamlv3.ScalarNode, Tag: "!!str", Value: key}, fresh)
	return fresh, true
}

func hasMergeKey(m *yamlv3.Node) bool {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Kind == yamlv3.ScalarNode && m.Content[i].Value == "<<" {
			return true
		}
	}
	return false
}

// setScalar sets key to the string value in mapping m.
func setScalar(m *yamlv3.Node, key, value string) {
	v := &yamlv3.Node{Kind: yamlv3.ScalarNode, Tag: "!!str", Value: value}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content[i+1] = v
			return
		}
	}
	m.Content = append(m.Content, &yamlv3.Node{Kind: yamlv3.ScalarNode, Tag: "!!str", Value: key}, v)
}

// Client runs actions on one release in one member.
type Client struct {
	cfg       *action.Configuration
	acc       *clustercache.Accessor
	Name      string
	Namespace string
}

// New returns a Client for release name in namespace of the member acc reaches. Helm's debug
// output goes to log at V(2), through redact when it is set (Helm logs apiserver errors, which may
// quote values).
func New(acc *clustercache.Accessor, name, namespace string, log logr.Logger, redact func(string) string) (*Client, error) {
	cfg := &action.Configuration{}
	debug := func(format string, v ...any) {
		if !log.V(2).Enabled() {
			return
		}
		msg := fmt.Sprintf(format, v...)
		if redact != nil {
			msg = redact(msg)
		}
		log.V(2).Info(msg)
	}
	if err := cfg.Init(acc.RESTClientGetter(namespace), namespace, "secret", debug); err != nil {
		return nil, fmt.Errorf("initialising Helm for %s/%s: %w", namespace, name, err)
	}
	return &Client{cfg: cfg, acc: acc, Name: name, Namespace: namespace}, nil
}

// Last returns the release's latest revision, or nil when there is none.
func (c *Client) Last() (*release.Release, error) {
	rel, err := c.cfg.Releases.Last(c.Name)
	if errors.Is(err, driver.ErrReleaseNotFound) {
		return nil, nil
	}
	return rel, err
}

// Deployed returns the release's deployed revision, or nil when none is (every revision failed,
// pending or superseded by one that failed).
func (c *Client) Deployed() (*release.Release, error) {
	rel, err := c.cfg.Releases.Deployed(c.Name)
	if errors.Is(err, driver.ErrNoDeployedReleases) || errors.Is(err, driver.ErrReleaseNotFound) {
		return nil, nil
	}
	return rel, err
}

// RecoverPending marks a release left pending-install, pending-upgrade or pending-rollback (by a
// manager that died, or an action cut off mid-way) as failed, so that the next action may run:
// Helm treats a pending release as a lock that nothing else clears. Only call it when no action
// of this process is running on the release. rel is the release's latest revision, as Last
// returned it (read once per action, not once per step). It reports whether it recovered anything.
func (c *Client) RecoverPending(rel *release.Release) (bool, error) {
	if rel == nil || rel.Info == nil || !rel.Info.Status.IsPending() {
		return false, nil
	}
	was := rel.Info.Status
	rel.SetStatus(release.StatusFailed, fmt.Sprintf("Paddock: the %s was interrupted (manager restart or cancellation) and marked failed", was))
	if err := c.cfg.Releases.Update(rel); err != nil {
		return false, fmt.Errorf("recovering release %s from %s: %w", c.Name, was, err)
	}
	return true, nil
}

// Options of Install and Upgrade.
type Options struct {
	Timeout         time.Duration
	Wait            bool
	CreateNamespace bool
	MaxHistory      int
	Labels          map[string]string
	Description     string
	// ClientSideValidation validates the rendered objects against the member's OpenAPI schema
	// before sending them, as Helm's CLI does. Off by default: the member's apiserver validates
	// every object anyway, and the client-side check parses the OpenAPI document of every group
	// the chart uses, on every action (three quarters of an install's CPU in the benchmark, which
	// made a fleet rollout CPU-bound).
	ClientSideValidation bool
	// Replace installs over a release whose history was kept at uninstall (Helm refuses the
	// name otherwise).
	Replace bool
}

// Install installs ch with vals.
func (c *Client) Install(ctx context.Context, ch *chart.Chart, vals map[string]any, o Options) (*release.Release, error) {
	if o.CreateNamespace {
		// Created here rather than by Helm, whose namespace creation validates the Namespace
		// against the member's OpenAPI schema (parsing the core group's document) on every install.
		if err := c.ensureNamespace(ctx); err != nil {
			return nil, err
		}
	}
	in := action.NewInstall(c.cfg)
	in.ReleaseName, in.Namespace = c.Name, c.Namespace
	in.Wait, in.Timeout = o.Wait, o.Timeout
	in.Labels, in.Description = o.Labels, o.Description
	in.PostRenderer = labeller{ReleaseLabelValue(c.Namespace, c.Name)}
	in.DisableOpenAPIValidation = !o.ClientSideValidation
	in.Replace = o.Replace
	return in.RunWithContext(ctx, ch, vals)
}

// Render renders ch with vals as an upgrade of this release would, without the cluster (no
// request is made): the manifest and hooks Helm would record. Capabilities are Helm's defaults,
// so a chart that reads the cluster's renders differently from what a real upgrade records. ch is
// changed (Helm prunes disabled dependencies): pass a copy of its own.
func (c *Client) Render(ctx context.Context, ch *chart.Chart, vals map[string]any) (string, []*release.Hook, error) {
	cfg := &action.Configuration{Log: func(string, ...any) {}}
	in := action.NewInstall(cfg)
	in.ReleaseName, in.Namespace = c.Name, c.Namespace
	in.DryRun, in.ClientOnly, in.Replace, in.IsUpgrade = true, true, true, true
	in.DisableOpenAPIValidation = true
	in.PostRenderer = labeller{ReleaseLabelValue(c.Namespace, c.Name)}
	rel, err := in.RunWithContext(ctx, ch, vals)
	if err != nil {
		return "", nil, err
	}
	return rel.Manifest, rel.Hooks, nil
}

// SameHooks says whether two releases' hooks are the same: the same objects, run at the same
// events, in the same order, deleted alike. What Helm records of their last run is not compared.
func SameHooks(a, b []*release.Hook) bool {
	if len(a) != len(b) {
		return false
	}
	key := func(h *release.Hook) string {
		if h == nil {
			return ""
		}
		var sb strings.Builder
		fmt.Fprintf(&sb, "%s\x00%s\x00%s\x00%s\x00%d", h.Name, h.Kind, h.Path, h.Manifest, h.Weight)
		for _, e := range h.Events {
			sb.WriteString("\x00e:" + string(e))
		}
		for _, p := range h.DeletePolicies {
			sb.WriteString("\x00d:" + string(p))
		}
		for _, p := range h.OutputLogPolicies {
			sb.WriteString("\x00l:" + string(p))
		}
		return sb.String()
	}
	ka, kb := make([]string, len(a)), make([]string, len(b))
	for i := range a {
		ka[i], kb[i] = key(a[i]), key(b[i])
	}
	sort.Strings(ka)
	sort.Strings(kb)
	return slices.Equal(ka, kb)
}

// ensureNamespace creates the release namespace unless it exists (labelled as Helm labels it).
func (c *Client) ensureNamespace(ctx context.Context) error {
	core, err := c.acc.CoreV1()
	if err != nil {
		return err
	}
	// Created first, read only if that is refused: one request for the common case (a new
	// namespace on install; AlreadyExists when it is there).
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: c.Namespace, Labels: map[string]string{"name": c.Namespace}}}
	_, err = core.Namespaces().Create(ctx, ns, metav1.CreateOptions{FieldManager: "paddock"})
	switch {
	case err == nil || apierrors.IsAlreadyExists(err):
		return nil
	case apierrors.IsForbidden(err):
		// Credentials that may not create namespaces: fine when it exists already.
		if _, gerr := core.Namespaces().Get(ctx, c.Namespace, metav1.GetOptions{}); gerr == nil {
			return nil
		}
	}
	return fmt.Errorf("creating namespace %s: %w", c.Namespace, err)
}

// Upgrade upgrades the release to ch with vals (the values replace the previous ones).
func (c *Client) Upgrade(ctx context.Context, ch *chart.Chart, vals map[string]any, o Options) (*release.Release, error) {
	up := action.NewUpgrade(c.cfg)
	up.Namespace, up.Wait, up.Timeout, up.MaxHistory = c.Namespace, o.Wait, o.Timeout, o.MaxHistory
	up.Labels, up.Description = o.Labels, o.Description
	up.ResetValues = true
	up.PostRenderer = labeller{ReleaseLabelValue(c.Namespace, c.Name)}
	up.DisableOpenAPIValidation = !o.ClientSideValidation
	return up.RunWithContext(ctx, c.Name, ch, vals)
}

// Rollback rolls the release back to revision version (0: the one before the current).
func (c *Client) Rollback(timeout time.Duration, maxHistory, version int) error {
	rb := action.NewRollback(c.cfg)
	rb.Timeout, rb.MaxHistory, rb.Version = timeout, maxHistory, version
	return rb.Run(c.Name)
}

// Uninstall removes the release; a release that does not exist is not an error.
func (c *Client) Uninstall(timeout time.Duration, keepHistory bool) error {
	un := action.NewUninstall(c.cfg)
	un.Timeout, un.KeepHistory, un.IgnoreNotFound = timeout, keepHistory, true
	_, err := un.Run(c.Name)
	if errors.Is(err, driver.ErrReleaseNotFound) {
		// Gone already (IgnoreNotFound covers a missing history; this, one removed meanwhile).
		return nil
	}
	return err
}
