package pluginrelease

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
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
	"time"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

// maxValuesBytes bounds one values source and a rendered template.
const maxValuesBytes = 1 << 20

// valuesError is bad values input: a condition and an event, no retry until something changes.
type valuesError struct {
	msg string
	// retry: the input may be fine and the cause outside the object (RBAC): not stalled.
	retry bool
}

func (e *valuesError) Error() string { return e.msg }

// baseValues merges valuesFrom (in order) and then values. It never puts a value in an error.
func baseValues(ctx context.Context, c client.Reader, prel *pluginsv1.PluginRelease, secretNamespaces []string) (map[string]any, error) {
	out := map[string]any{}
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
			if secretNamespaces != nil && !slices.Contains(secretNamespaces, prel.Namespace) {
				return nil, &valuesError{msg: fmt.Sprintf("spec.valuesFrom[%d]: the manager does not read values Secrets in namespace %s "+
					"(an administrator adds it to --values-secret-namespaces, the chart's manager.valuesSecretNamespaces)", i, prel.Namespace)}
			}
			s := &corev1.Secret{}
			err := c.Get(ctx, nn, s)
			switch {
			case err == nil:
				data, found = s.Data[key]
			case apierrors.IsForbidden(err):
				return nil, &valuesError{msg: fmt.Sprintf("spec.valuesFrom[%d]: the manager is not allowed to read Secret %s (RBAC); "+
					"an administrator grants it with the chart's manager.valuesSecretNamespaces", i, nn), retry: true}
			case !apierrors.IsNotFound(err):
				return nil, fmt.Errorf("reading Secret %s: %w", nn, err)
			}
		default:
			cm := &corev1.ConfigMap{}
			err := c.Get(ctx, nn, cm)
			if err == nil {
				var s string
				s, found = cm.Data[key]
				data = []byte(s)
			} else if !apierrors.IsNotFound(err) {
				return nil, fmt.Errorf("reading ConfigMap %s: %w", nn, err)
			}
		}
		if !found {
			if ref.Optional {
				continue
			}
			return nil, &valuesError{msg: fmt.Sprintf("spec.valuesFrom[%d]: %s %s has no key %q (mark it optional: true to skip)", i, ref.Kind, nn, key)}
		}
		if len(data) > maxValuesBytes {
			return nil, &valuesError{msg: fmt.Sprintf("spec.valuesFrom[%d]: %s %s key %q is larger than %d bytes", i, ref.Kind, nn, key, maxValuesBytes)}
		}
		m := map[string]any{}
		if err := yaml.Unmarshal(data, &m); err != nil {
			// The YAML error may quote the document: name the source only.
			return nil, &valuesError{msg: fmt.Sprintf("spec.valuesFrom[%d]: %s %s key %q is not a YAML map of values", i, ref.Kind, nn, key)}
		}
		out = merge(out, m)
	}
	if prel.Spec.Values != nil && len(prel.Spec.Values.Raw) > 0 {
		m := map[string]any{}
		if err := json.Unmarshal(prel.Spec.Values.Raw, &m); err != nil {
			return nil, &valuesError{msg: "spec.values is not a map of values"}
		}
		out = merge(out, m)
	}
	return out, nil
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
	tmpl, err := parseValuesTemplate(prel.Spec.ValuesTemplate, &renderBudget{})
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
		return nil, &valuesError{msg: fmt.Sprintf("spec.valuesTemplate takes longer than %s to render for cluster %s", templateTimeout, mc.Name)}
	}
	if err := execErr; err != nil {
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

// configDigest identifies what a target must run: the chart archive and the values (JSON with
// sorted keys), plus the settings that change the release's objects.
func configDigest(chartDigest string, vals map[string]any, prel *pluginsv1.PluginRelease) string {
	b, _ := json.Marshal(vals)
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%t\n", chartDigest, prel.GetReleaseName(), prel.GetTargetNamespace(), prel.Spec.CreateNamespace)
	h.Write(b)
	return "sha256:" + hex.EncodeToString(h.Sum(nil))[:32]
}
