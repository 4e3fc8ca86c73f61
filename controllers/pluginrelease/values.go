package pluginrelease

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

// maxValuesBytes bounds one values source and a rendered template.
const maxValuesBytes = 1 << 20

// maxSpecValuesBytes bounds spec.values itself.
const maxSpecValuesBytes = 128 << 10

// valuesError is bad values input: a condition and an event, no retry until something changes.
type valuesError struct {
	msg string
	// retry: the input may be fine and the cause outside the object (RBAC): not stalled.
	retry bool
}

func (e *valuesError) Error() string { return e.msg }

// baseValues merges valuesFrom (in order) and then values. It never puts a value in an error.
// It also returns the scalar values read from Secrets, so that messages can be redacted.
func baseValues(ctx context.Context, c client.Reader, prel *pluginsv1.PluginRelease, secretNamespaces, protected []string) (map[string]any, []string, error) {
	out := map[string]any{}
	var secrets []string
	for i, ref := range prel.Spec.ValuesFrom {
		key := ref.Key
		if key == "" {
			key = pluginsv1.DefaultValuesKey
		}
		nn := types.NamespacedName{Namespace: prel.Namespace, Name: ref.Name}
		var data []byte
		var found bool
		switch ref.Kind {
		case "Secret":
			if slices.Contains(protected, prel.Namespace) {
				return nil, nil, &valuesError{msg: fmt.Sprintf("spec.valuesFrom[%d]: namespace %s holds the manager's own Secrets (member kubeconfigs, "+
					"repository credentials); PluginReleases there cannot read values from Secrets", i, prel.Namespace)}
			}
			if secretNamespaces != nil && !slices.Contains(secretNamespaces, prel.Namespace) {
				return nil, nil, &valuesError{msg: fmt.Sprintf("spec.valuesFrom[%d]: the manager does not read values Secrets in namespace %s "+
					"(an administrator adds it to --values-secret-namespaces, the chart's manager.valuesSecretNamespaces)", i, prel.Namespace)}
			}
			s := &corev1.Secret{}
			err := c.Get(ctx, nn, s)
			switch {
			case err == nil:
				data, found = s.Data[key]
			case apierrors.IsForbidden(err):
				return nil, nil, &valuesError{msg: fmt.Sprintf("spec.valuesFrom[%d]: the manager is not allowed to read Secret %s (RBAC); "+
					"an administrator grants it with the chart's manager.valuesSecretNamespaces", i, nn), retry: true}
			case !apierrors.IsNotFound(err):
				return nil, nil, fmt.Errorf("reading Secret %s: %w", nn, err)
			}
		default:
			cm := &corev1.ConfigMap{}
			err := c.Get(ctx, nn, cm)
			if err == nil {
				var s string
				s, found = cm.Data[key]
				data = []byte(s)
			} else if !apierrors.IsNotFound(err) {
				return nil, nil, fmt.Errorf("reading ConfigMap %s: %w", nn, err)
			}
		}
		if !found {
			if ref.Optional {
				continue
			}
			// Not stalled: the object may be created or filled in later (ConfigMaps are watched,
			// Secrets read again every SecretValuesInterval).
			return nil, nil, &valuesError{msg: fmt.Sprintf("spec.valuesFrom[%d]: %s %s has no key %q (mark it optional: true to skip)", i, ref.Kind, nn, key), retry: true}
		}
		if len(data) > maxValuesBytes {
			return nil, nil, &valuesError{msg: fmt.Sprintf("spec.valuesFrom[%d]: %s %s key %q is larger than %d bytes", i, ref.Kind, nn, key, maxValuesBytes)}
		}
		m := map[string]any{}
		if err := yaml.Unmarshal(data, &m); err != nil {
			// The YAML error may quote the document: name the source only.
			return nil, nil, &valuesError{msg: fmt.Sprintf("spec.valuesFrom[%d]: %s %s key %q is not a YAML map of values", i, ref.Kind, nn, key)}
		}
		if ref.Kind == "Secret" {
			secrets = appendScalars(secrets, m)
		}
		out = merge(out, m)
	}
	if prel.Spec.Values != nil && len(prel.Spec.Values.Raw) > maxSpecValuesBytes {
		// The object holds status for up to MaxTargetClusters targets too (etcd stores about
		// 1.5 MiB in all): large values belong in a ConfigMap or Secret.
		return nil, nil, &valuesError{msg: fmt.Sprintf("spec.values is %d bytes, more than %d: put large values in a ConfigMap or Secret and name it in spec.valuesFrom",
			len(prel.Spec.Values.Raw), maxSpecValuesBytes)}
	}
	if prel.Spec.Values != nil && len(prel.Spec.Values.Raw) > 0 {
		m := map[string]any{}
		if err := json.Unmarshal(prel.Spec.Values.Raw, &m); err != nil {
			return nil, nil, &valuesError{msg: "spec.values is not a map of values"}
		}
		out = merge(out, m)
	}
	return out, secrets, nil
}

// appendScalars appends the string forms of v's scalar leaves that are long enough to be
// worth redacting (shorter ones would redact ordinary words).
func appendScalars(out []string, v any) []string {
	switch x := v.(type) {
	case map[string]any:
		for _, e := range x {
			out = appendScalars(out, e)
		}
	case []any:
		for _, e := range x {
			out = appendScalars(out, e)
		}
	case nil, bool:
	case float64:
		// YAML numbers arrive as float64; messages print them as integers or decimals.
		for _, s := range []string{strconv.FormatFloat(x, 'f', -1, 64), fmt.Sprint(x)} {
			if len(s) >= 4 {
				out = append(out, s)
			}
		}
	default:
		if s := fmt.Sprint(x); len(s) >= 4 {
			out = append(out, s)
			// As an apiserver or Go error quotes it (%q).
			if q := strconv.Quote(s); q[1:len(q)-1] != s {
				out = append(out, q[1:len(q)-1])
			}
		}
	}
	return out
}

// redact replaces every secret in msg with [redacted], longest first.
func redact(msg string, secrets []string) string {
	if len(secrets) == 0 || msg == "" {
		return msg
	}
	sorted := append([]string(nil), secrets...)
	sort.Slice(sorted, func(i, j int) bool { return len(sorted[i]) > len(sorted[j]) })
	for _, s := range sorted {
		msg = strings.ReplaceAll(msg, s, "[redacted]")
	}
	return msg
}

// redactor returns a function redacting the release's secret values (read when it is called).
func (r *Reconciler) redactor(uid types.UID) func(string) string {
	return func(msg string) string {
		r.mu.Lock()
		secrets := r.secrets[uid]
		r.mu.Unlock()
		return redact(msg, secrets)
	}
}

// merge merges src over dst, recursively for maps (as Helm merges values files).
func merge(dst, src map[string]any) map[string]any {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				dst[k] = merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
	return dst
}

// clusterData is what valuesTemplate sees.
type clusterData struct {
	Cluster struct {
		Name        string
		Labels      map[string]string
		Annotations map[string]string
		Status      map[string]any
	}
}

// cappedBuffer fails writes beyond its cap, which stops a template's execution.
type cappedBuffer struct {
	bytes.Buffer
	max int
}

var errTooLarge = errors.New("the rendered values are too large")

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > b.max {
		return 0, errTooLarge
	}
	return b.Buffer.Write(p)
}

// clusterValues renders valuesTemplate for mc and merges it over a copy of base.
func clusterValues(prel *pluginsv1.PluginRelease, base map[string]any, mc *clustersv1.MemberCluster) (map[string]any, error) {
	vals := deepCopy(base)
	if prel.Spec.ValuesTemplate == "" {
		return vals, nil
	}
	budget := &renderBudget{deadline: time.Now().Add(templateTimeout)}
	tmpl, err := parseValuesTemplate(prel.Spec.ValuesTemplate, budget)
	if err != nil {
		return nil, &valuesError{msg: fmt.Sprintf("spec.valuesTemplate does not parse: %s", err)}
	}
	var data clusterData
	data.Cluster.Name, data.Cluster.Labels, data.Cluster.Annotations = mc.Name, mc.Labels, mc.Annotations
	if st, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&mc.Status); err == nil {
		data.Cluster.Status = st
	}
	out := &cappedBuffer{max: maxValuesBytes}
	done := make(chan error, 1)
	go func() { done <- tmpl.Execute(out, data) }()
	var execErr error
	select {
	case execErr = <-done:
	case <-time.After(templateTimeout):
		// Retried, not stalled: a busy manager may be the cause.
		return nil, &valuesError{msg: fmt.Sprintf("spec.valuesTemplate takes longer than %s to render for cluster %s", templateTimeout, mc.Name), retry: true}
	}
	if err := execErr; err != nil {
		if errors.Is(err, errDeadline) {
			return nil, &valuesError{msg: fmt.Sprintf("spec.valuesTemplate takes longer than %s to render for cluster %s", templateTimeout, mc.Name), retry: true}
		}
		if errors.Is(err, errTooLarge) {
			return nil, &valuesError{msg: fmt.Sprintf("spec.valuesTemplate renders more than %d bytes for cluster %s", maxValuesBytes, mc.Name)}
		}
		return nil, &valuesError{msg: fmt.Sprintf("spec.valuesTemplate fails for cluster %s: %s", mc.Name, err)}
	}
	m := map[string]any{}
	if err := yaml.Unmarshal(out.Bytes(), &m); err != nil {
		return nil, &valuesError{msg: fmt.Sprintf("spec.valuesTemplate does not render YAML values for cluster %s", mc.Name)}
	}
	return merge(vals, m), nil
}

func deepCopy(m map[string]any) map[string]any {
	b, _ := json.Marshal(m)
	out := map[string]any{}
	_ = json.Unmarshal(b, &out)
	return out
}
