// Package drift compares a Helm release's manifest with the objects live in a cluster and builds
// the patches that put them back, without a new Helm revision.
//
// What counts as drift: a field the manifest sets that the live object lacks or holds with another
// value, or an object of the manifest that is gone. Fields the live object has beyond the manifest
// (defaults, status, what other controllers add) are not drift, and neither are the paths of
// ignore rules. Values the apiserver normalises compare equal to their normal form (quantities
// such as 0.5 and 500m; empty and absent maps, lists and zero values; a Secret's stringData and
// its data), so a correction never leaves a difference that would be corrected again.
package drift

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// MaxObjects bounds how many objects of one manifest are checked.
const MaxObjects = 2000

// ParseManifest splits a release manifest (multi-document YAML) into objects. Empty documents are
// skipped; a document without apiVersion, kind or metadata.name is an error.
func ParseManifest(manifest string) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifest), 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("the release manifest does not parse: %w", err)
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		objs := []*unstructured.Unstructured{u}
		if u.IsList() {
			// A List document (kind: List, or any *List): Helm installs its items.
			list, err := u.ToList()
			if err != nil {
				return nil, fmt.Errorf("the release manifest holds a list that does not parse: %w", err)
			}
			objs = objs[:0]
			for i := range list.Items {
				objs = append(objs, &list.Items[i])
			}
		}
		for _, o := range objs {
			if o.GetAPIVersion() == "" || o.GetKind() == "" || o.GetName() == "" {
				return nil, fmt.Errorf("the release manifest holds an object without apiVersion, kind or name")
			}
			if len(out) == MaxObjects {
				return nil, fmt.Errorf("the release manifest holds more than %d objects", MaxObjects)
			}
			out = append(out, o)
		}
	}
}

// Rule ignores paths (JSON pointers) of the objects it targets: all objects when Kind is empty.
type Rule struct {
	Group, Kind, Name string
	Paths             []string
}

// IgnoredPaths returns the paths ignored in desired: those the rules name, and those the chart
// leaves for someone else to fill (ownedByOthers).
func IgnoredPaths(rules []Rule, desired *unstructured.Unstructured) []string {
	gvk, name := desired.GroupVersionKind(), desired.GetName()
	out := ownedByOthers(desired)
	for _, r := range rules {
		if r.Kind != "" && (r.Kind != gvk.Kind || r.Group != gvk.Group || (r.Name != "" && r.Name != name)) {
			continue
		}
		out = append(out, r.Paths...)
	}
	return out
}

// ownedByOthers are the paths of an object that, as the chart writes it, are for someone else to
// fill: Helm's three-way merge leaves them alone, and correcting them fights that other party.
//   - an aggregated ClusterRole's rules (the controller manager fills them from aggregationRule);
//   - a Service's clusterIP(s) left empty (the apiserver allocates them);
//   - a caBundle that cert-manager's CA injector fills (the object asks for it by annotation),
//     in webhook configurations, CRD conversion webhooks and APIServices.
func ownedByOthers(desired *unstructured.Unstructured) []string {
	gvk := desired.GroupVersionKind()
	var out []string
	switch {
	case gvk.Group == "rbac.authorization.k8s.io" && gvk.Kind == "ClusterRole":
		if _, ok := desired.Object["aggregationRule"]; ok {
			out = append(out, "/rules")
		}
	case gvk.Group == "" && gvk.Kind == "Service":
		if ip, _, _ := unstructured.NestedString(desired.Object, "spec", "clusterIP"); ip == "" {
			out = append(out, "/spec/clusterIP", "/spec/clusterIPs")
		}
	}
	injected := false
	for k := range desired.GetAnnotations() {
		if strings.HasPrefix(k, "cert-manager.io/inject-") {
			injected = true
		}
	}
	if !injected {
		return out
	}
	switch {
	case gvk.Group == "admissionregistration.k8s.io" && (gvk.Kind == "ValidatingWebhookConfiguration" || gvk.Kind == "MutatingWebhookConfiguration"):
		hooks, _, _ := unstructured.NestedSlice(desired.Object, "webhooks")
		for i := range hooks {
			out = append(out, "/webhooks/"+strconv.Itoa(i)+"/clientConfig/caBundle")
		}
	case gvk.Group == "apiextensions.k8s.io" && gvk.Kind == "CustomResourceDefinition":
		out = append(out, "/spec/conversion/webhook/clientConfig/caBundle")
	case gvk.Group == "apiregistration.k8s.io" && gvk.Kind == "APIService":
		out = append(out, "/spec/caBundle")
	}
	return out
}

// Normalize returns the desired object as the apiserver would store it where that differs from
// the manifest's spelling: a Secret's stringData is folded into data.
func Normalize(desired *unstructured.Unstructured) *unstructured.Unstructured {
	d := desired.DeepCopy()
	if d.GetKind() == "Secret" && d.GroupVersionKind().Group == "" {
		if sd, ok := d.Object["stringData"].(map[string]any); ok {
			data, _ := d.Object["data"].(map[string]any)
			if data == nil {
				data = map[string]any{}
			}
			for k, v := range sd {
				if s, ok := v.(string); ok {
					data[k] = base64.StdEncoding.EncodeToString([]byte(s))
				}
			}
			d.Object["data"] = data
			delete(d.Object, "stringData")
		}
	}
	return d
}

// Diff lists the JSON pointers at which live departs from desired (both as the apiserver stores
// them: pass Normalize(desired)), ignoring the ignored paths and below. The object's identity and
// server-owned metadata are not compared, nor is status.
func Diff(desired, live map[string]any, ignored []string) []string {
	var out []string
	for k, dv := range desired {
		switch k {
		case "apiVersion", "kind", "status":
			continue
		case "metadata":
			dm, _ := dv.(map[string]any)
			lm, _ := live["metadata"].(map[string]any)
			for _, mk := range []string{"labels", "annotations"} {
				if v, ok := dm[mk]; ok {
					out = diffValue(out, "/metadata/"+mk, v, lookup(lm, mk), ignored)
				}
			}
			continue
		}
		out = diffValue(out, "/"+escape(k), dv, lookup(live, k), ignored)
	}
	sort.Strings(out)
	return out
}

func lookup(m map[string]any, k string) any {
	if m == nil {
		return nil
	}
	return m[k]
}

func diffValue(out []string, path string, desired, live any, ignored []string) []string {
	if isIgnored(path, ignored) || desired == nil {
		return out
	}
	if live == nil {
		if isEmpty(desired) {
			return out
		}
		return append(out, path)
	}
	switch d := desired.(type) {
	case map[string]any:
		l, ok := live.(map[string]any)
		if !ok {
			return append(out, path)
		}
		keys := make([]string, 0, len(d))
		for k := range d {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			out = diffValue(out, path+"/"+escape(k), d[k], l[k], ignored)
		}
		return out
	case []any:
		l, ok := live.([]any)
		if !ok || len(l) != len(d) {
			return append(out, path)
		}
		for i := range d {
			out = diffValue(out, path+"/"+strconv.Itoa(i), d[i], l[i], ignored)
		}
		return out
	}
	if scalarEqual(desired, live, quantityPath(path)) {
		return out
	}
	return append(out, path)
}

// quantitySegments are the fields under which built-in kinds hold resource.Quantity values, which
// the apiserver stores normalised (cpu: 1000m reads back as "1"): container resources, quotas,
// limit ranges, overhead, emptyDir size limits, HPA targets.
var quantitySegments = map[string]bool{
	"limits": true, "requests": true, "hard": true, "overhead": true, "sizeLimit": true,
	"max": true, "min": true, "default": true, "defaultRequest": true, "maxLimitRequestRatio": true,
	"averageValue": true, "capacity": true, "allocatable": true,
}

// quantityPath reports whether the field at path may hold a quantity. Elsewhere (a ConfigMap's
// data, labels, an env var) "1" and "1000m" are different strings, and an edit from one to the
// other is drift.
func quantityPath(path string) bool {
	segs := strings.Split(strings.TrimPrefix(path, "/"), "/")
	if len(segs) == 0 {
		return false
	}
	switch segs[0] {
	case "data", "stringData", "binaryData", "metadata":
		return false
	}
	for i, seg := range segs {
		if quantitySegments[seg] {
			return true
		}
		// HPA metric targets: target.value.
		if seg == "value" && i > 0 && segs[i-1] == "target" {
			return true
		}
	}
	return false
}

// isEmpty: values the apiserver drops (omitempty) compare equal to absence.
func isEmpty(v any) bool {
	switch x := v.(type) {
	case map[string]any:
		return len(x) == 0
	case []any:
		return len(x) == 0
	case string:
		return x == ""
	case bool:
		return !x
	case int64:
		return x == 0
	case float64:
		return x == 0
	case json.Number:
		f, err := x.Float64()
		return err == nil && f == 0
	}
	return false
}

func scalarEqual(a, b any, quantity bool) bool {
	if fa, ok := number(a); ok {
		if fb, ok := number(b); ok {
			return fa == fb
		}
	}
	if reflect.DeepEqual(a, b) {
		return true
	}
	if !quantity {
		return false
	}
	sa, ok1 := a.(string)
	sb, ok2 := b.(string)
	if ok1 && ok2 {
		qa, err1 := resource.ParseQuantity(sa)
		qb, err2 := resource.ParseQuantity(sb)
		return err1 == nil && err2 == nil && qa.Cmp(qb) == 0
	}
	// A quantity written as a number (cpu: 1) is stored as a string ("1").
	if ok2 {
		if fa, ok := number(a); ok {
			qb, err := resource.ParseQuantity(sb)
			return err == nil && qb.AsApproximateFloat64() == fa
		}
	}
	return false
}

func number(v any) (float64, bool) {
	switch x := v.(type) {
	case int64:
		return float64(x), true
	case int:
		return float64(x), true
	case int32:
		return float64(x), true
	case float64:
		return x, true
	case json.Number:
		f, err := x.Float64()
		return f, err == nil
	}
	return 0, false
}

func isIgnored(path string, ignored []string) bool {
	for _, p := range ignored {
		if path == p || strings.HasPrefix(path, p+"/") {
			return true
		}
	}
	return false
}

func escape(k string) string {
	return strings.ReplaceAll(strings.ReplaceAll(k, "~", "~0"), "/", "~1")
}

func unescape(k string) string {
	return strings.ReplaceAll(strings.ReplaceAll(k, "~1", "/"), "~0", "~")
}

// MergePatch is the JSON merge patch that puts the drifted paths (Diff's result) of live back to
// desired (pass Normalize(desired)), and nothing else: fields the manifest does not set, and those
// it sets that did not drift, are not in it. A merge patch replaces a list whole, so a drifted
// path inside a list sends the live list with only that path put back (an injected caBundle or a
// sidecar in it stays). Ignored paths inside a list that is replaced whole keep the live value.
func MergePatch(desired, live map[string]any, paths, ignored []string) ([]byte, error) {
	d := stripNulls(desired).(map[string]any)
	p := map[string]any{}
	for _, path := range paths {
		putBack(p, d, live, splitPointer(path))
	}
	for _, path := range ignored {
		restore(p, live, path)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(p); err != nil {
		return nil, err
	}
	return bytes.TrimSpace(buf.Bytes()), nil
}

func splitPointer(path string) []string {
	parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
	for i := range parts {
		parts[i] = unescape(parts[i])
	}
	return parts
}

// putBack adds to the patch p what puts path (parts) of live back to desired d.
func putBack(p, d, live map[string]any, parts []string) {
	pcur, dcur, lcur := p, d, live
	for i, k := range parts {
		dv, ok := dcur[k]
		if !ok {
			return
		}
		if i == len(parts)-1 {
			pcur[k] = deepCopyValue(dv)
			return
		}
		if dl, isList := dv.([]any); isList {
			// The rest of the path is inside a list: send the list whole, as live has it (or as
			// the patch already has it), with the path put back.
			var base []any
			if pl, ok := pcur[k].([]any); ok {
				base = pl
			} else if ll, ok := lcur[k].([]any); ok && len(ll) == len(dl) {
				base = deepCopyValue(ll).([]any)
			} else {
				pcur[k] = deepCopyValue(dl)
				return
			}
			pcur[k] = setIn(base, dl, parts[i+1:])
			return
		}
		dm, isMap := dv.(map[string]any)
		if !isMap {
			pcur[k] = deepCopyValue(dv)
			return
		}
		next, _ := pcur[k].(map[string]any)
		if next == nil {
			next = map[string]any{}
			pcur[k] = next
		}
		lm, _ := lcur[k].(map[string]any)
		pcur, dcur, lcur = next, dm, lm
	}
}

// setIn sets the value of desired at parts into base (a copy of the live value of the same
// shape), and returns base.
func setIn(base, desired any, parts []string) any {
	if len(parts) == 0 {
		return deepCopyValue(desired)
	}
	switch b := base.(type) {
	case []any:
		dl, _ := desired.([]any)
		n, err := strconv.Atoi(parts[0])
		if err != nil || n < 0 || n >= len(b) || n >= len(dl) {
			return deepCopyValue(desired)
		}
		b[n] = setIn(b[n], dl[n], parts[1:])
		return b
	case map[string]any:
		dm, _ := desired.(map[string]any)
		dv, ok := dm[parts[0]]
		if !ok {
			return b
		}
		if cur, ok := b[parts[0]]; ok {
			b[parts[0]] = setIn(cur, dv, parts[1:])
		} else {
			b[parts[0]] = deepCopyValue(dv)
		}
		return b
	}
	return deepCopyValue(desired)
}

// restore makes path in p hold live's value: deleted where only maps lead to it (a merge patch
// leaves an absent key alone), copied from live once the path enters a list.
func restore(p map[string]any, live map[string]any, path string) {
	parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
	var cur any = p
	var lcur any = live
	inList := false
	for i, raw := range parts {
		last := i == len(parts)-1
		switch c := cur.(type) {
		case map[string]any:
			k := unescape(raw)
			var lnext any
			if lm, ok := lcur.(map[string]any); ok {
				lnext = lm[k]
			}
			if last {
				switch {
				case !inList:
					delete(c, k)
				case lnext != nil:
					c[k] = deepCopyValue(lnext)
				default:
					delete(c, k)
				}
				return
			}
			next, ok := c[k]
			if !ok {
				return
			}
			cur, lcur = next, lnext
		case []any:
			n, err := strconv.Atoi(raw)
			if err != nil || n < 0 || n >= len(c) {
				return
			}
			inList = true
			var lnext any
			if ll, ok := lcur.([]any); ok && n < len(ll) {
				lnext = ll[n]
			}
			if last {
				if lnext != nil {
					c[n] = deepCopyValue(lnext)
				}
				return
			}
			cur, lcur = c[n], lnext
		default:
			return
		}
	}
}

func stripNulls(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			if e != nil {
				out[k] = stripNulls(e)
			}
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = stripNulls(e)
		}
		return out
	}
	return v
}

func deepCopyValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = deepCopyValue(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = deepCopyValue(e)
		}
		return out
	}
	return v
}
