package drift

import (
	"encoding/json"
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

const manifest = `---
# Source: hello/templates/configmap.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: hello
  labels:
    app: hello
data:
  greeting: hi
---
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  creationTimestamp: null
spec:
  replicas: 2
  template:
    spec:
      hostNetwork: false
      containers:
      - name: web
        image: nginx:1.27
        resources:
          requests:
            cpu: 0.5
            memory: 1024Mi
        env: []
status: {}
`

func parse(t *testing.T) map[string]map[string]any {
	t.Helper()
	objs, err := ParseManifest(manifest)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	out := map[string]map[string]any{}
	for _, o := range objs {
		out[o.GetKind()] = Normalize(o).Object
	}
	return out
}

func live(t *testing.T, js string) map[string]any {
	t.Helper()
	m := map[string]any{}
	NewWithT(t).Expect(json.Unmarshal([]byte(js), &m)).To(Succeed())
	return m
}

// As the apiserver stores the Deployment: defaults added, quantities normalised, empty and zero
// values dropped, status filled.
const liveDeployment = `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","namespace":"apps",
 "uid":"1","resourceVersion":"7","generation":3,"labels":{"app.kubernetes.io/managed-by":"Helm"}},
 "spec":{"replicas":2,"revisionHistoryLimit":10,"template":{"spec":{"restartPolicy":"Always",
  "containers":[{"name":"web","image":"nginx:1.27","imagePullPolicy":"IfNotPresent",
   "resources":{"requests":{"cpu":"500m","memory":"1Gi"}}}]}}},
 "status":{"replicas":2}}`

func TestParseManifestSkipsEmptyDocuments(t *testing.T) {
	g := NewWithT(t)
	objs, err := ParseManifest(manifest)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(objs).To(HaveLen(2))
	g.Expect(objs[1].GetName()).To(Equal("web"))
	_, err = ParseManifest("apiVersion: v1\nkind: ConfigMap\n")
	g.Expect(err).To(MatchError(ContainSubstring("without apiVersion, kind or name")))
	_, err = ParseManifest("a: [\n")
	g.Expect(err).To(HaveOccurred())
}

func TestNoDriftWhereTheAPIServerOnlyNormalisedOrDefaulted(t *testing.T) {
	g := NewWithT(t)
	d := parse(t)["Deployment"]
	g.Expect(Diff(d, live(t, liveDeployment), nil)).To(BeEmpty())
}

func TestDriftFindsChangedRemovedAndListFields(t *testing.T) {
	g := NewWithT(t)
	d := parse(t)["Deployment"]
	l := live(t, liveDeployment)
	spec := l["spec"].(map[string]any)
	spec["replicas"] = float64(5)
	c := spec["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
	c["image"] = "evil:latest"
	delete(c["resources"].(map[string]any)["requests"].(map[string]any), "memory")
	g.Expect(Diff(d, l, nil)).To(Equal([]string{
		"/spec/replicas",
		"/spec/template/spec/containers/0/image",
		"/spec/template/spec/containers/0/resources/requests/memory",
	}))
	// Ignore rules hide paths and everything below them.
	g.Expect(Diff(d, l, []string{"/spec/replicas", "/spec/template/spec/containers/0"})).To(BeEmpty())

	// A container more or less is a different list.
	spec["template"].(map[string]any)["spec"].(map[string]any)["containers"] = []any{c, c}
	g.Expect(Diff(d, l, []string{"/spec/replicas"})).To(Equal([]string{"/spec/template/spec/containers"}))
}

func TestDriftInLabelsButNotInServerMetadata(t *testing.T) {
	g := NewWithT(t)
	cm := parse(t)["ConfigMap"]
	l := live(t, `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"hello","uid":"x","labels":{"app":"hello","extra":"kept"},
	  "annotations":{"a":"b"}},"data":{"greeting":"hi"}}`)
	g.Expect(Diff(cm, l, nil)).To(BeEmpty(), "extra labels and annotations are not drift")
	l["metadata"].(map[string]any)["labels"] = map[string]any{"extra": "kept"}
	l["data"].(map[string]any)["greeting"] = "changed"
	g.Expect(Diff(cm, l, nil)).To(Equal([]string{"/data/greeting", "/metadata/labels/app"}))
	delete(l, "data")
	g.Expect(Diff(cm, l, nil)).To(ContainElement("/data"), "a whole map gone is one difference")
}

func TestSecretStringDataComparesWithData(t *testing.T) {
	g := NewWithT(t)
	objs, err := ParseManifest("apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\nstringData:\n  password: hunter2\n")
	g.Expect(err).NotTo(HaveOccurred())
	d := Normalize(objs[0]).Object
	l := live(t, `{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"},"type":"Opaque","data":{"password":"aHVudGVyMg=="}}`)
	g.Expect(Diff(d, l, nil)).To(BeEmpty())
	l["data"].(map[string]any)["password"] = "eA=="
	g.Expect(Diff(d, l, nil)).To(Equal([]string{"/data/password"}))
	g.Expect(objs[0].Object).To(HaveKey("stringData"), "Normalize works on a copy")
}

func TestMergePatchPutsBackOnlyWhatDrifted(t *testing.T) {
	g := NewWithT(t)
	d := parse(t)["Deployment"]
	l := live(t, liveDeployment)
	spec := l["spec"].(map[string]any)
	spec["replicas"] = float64(5)
	spec["paused"] = true // not in the manifest: not drift, not in the patch
	c := spec["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
	c["image"] = "evil:latest"
	c["terminationMessagePath"] = "/dev/termination-log" // a default the manifest does not set

	paths := Diff(d, l, nil)
	g.Expect(paths).To(ConsistOf("/spec/replicas", "/spec/template/spec/containers/0/image"))
	b, err := MergePatch(d, l, paths, nil)
	g.Expect(err).NotTo(HaveOccurred())
	p := map[string]any{}
	g.Expect(json.Unmarshal(b, &p)).To(Succeed())
	g.Expect(p).To(HaveKey("spec"))
	g.Expect(p).NotTo(HaveKey("metadata"))
	g.Expect(p["spec"]).To(HaveKeyWithValue("replicas", float64(2)))
	g.Expect(p["spec"]).NotTo(HaveKey("paused"))
	pc := p["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
	g.Expect(pc["image"]).To(Equal("nginx:1.27"), "the drifted field is put back")
	g.Expect(pc["imagePullPolicy"]).To(Equal("IfNotPresent"), "the list goes as live has it")
	g.Expect(pc["terminationMessagePath"]).To(Equal("/dev/termination-log"))
	g.Expect(string(b)).NotTo(ContainSubstring("null"), "a null would delete a live field")
	g.Expect(Diff(d, live(t, liveDeployment), nil)).To(BeEmpty(), "the desired object is untouched")

	// An ignored path inside a list sent whole keeps its live value.
	b, err = MergePatch(d, l, []string{"/spec/template/spec/containers"}, []string{"/spec/template/spec/containers/0/image"})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(b)).To(ContainSubstring(`"image":"evil:latest"`))
}

// A webhook configuration whose caBundle another controller injects: correcting a drifted
// timeout must not wipe it (a merge patch replaces lists whole).
func TestMergePatchKeepsWhatOthersPutInAList(t *testing.T) {
	g := NewWithT(t)
	objs, err := ParseManifest(`apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: hooks
webhooks:
- name: a.example.com
  timeoutSeconds: 5
  clientConfig:
    service: {name: svc, namespace: ns}
`)
	g.Expect(err).NotTo(HaveOccurred())
	d := Normalize(objs[0]).Object
	l := live(t, `{"apiVersion":"admissionregistration.k8s.io/v1","kind":"ValidatingWebhookConfiguration","metadata":{"name":"hooks"},
	 "webhooks":[{"name":"a.example.com","timeoutSeconds":30,"clientConfig":{"caBundle":"Q0E=","service":{"name":"svc","namespace":"ns","port":443}}}]}`)
	paths := Diff(d, l, nil)
	g.Expect(paths).To(Equal([]string{"/webhooks/0/timeoutSeconds"}))
	b, err := MergePatch(d, l, paths, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(b)).To(ContainSubstring(`"caBundle":"Q0E="`))
	g.Expect(string(b)).To(ContainSubstring(`"timeoutSeconds":5`))
}

func TestIgnoredPathsByTarget(t *testing.T) {
	g := NewWithT(t)
	rules := []Rule{
		{Paths: []string{"/metadata/annotations"}},
		{Group: "apps", Kind: "Deployment", Paths: []string{"/spec/replicas"}},
		{Kind: "ConfigMap", Name: "other", Paths: []string{"/data"}},
	}
	obj := func(js string) *unstructured.Unstructured { return &unstructured.Unstructured{Object: live(t, js)} }
	g.Expect(IgnoredPaths(rules, obj(`{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"}}`))).To(ConsistOf("/metadata/annotations", "/spec/replicas"))
	g.Expect(IgnoredPaths(rules, obj(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"hello"}}`))).To(ConsistOf("/metadata/annotations"))
	g.Expect(IgnoredPaths(rules, obj(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"other"}}`))).To(ConsistOf("/metadata/annotations", "/data"))
}

// What a chart leaves for others to fill is not drift: the rules of an aggregated ClusterRole,
// an empty clusterIP, a caBundle cert-manager injects. The same fields set by the chart are.
func TestWhatOthersFillIsNotDrift(t *testing.T) {
	g := NewWithT(t)
	for name, tc := range map[string]struct {
		desired, live string
		want          []string
	}{
		"aggregated ClusterRole": {
			`{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"agg"},"aggregationRule":{"clusterRoleSelectors":[{"matchLabels":{"a":"b"}}]},"rules":[]}`,
			`{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"agg"},"aggregationRule":{"clusterRoleSelectors":[{"matchLabels":{"a":"b"}}]},"rules":[{"verbs":["get"],"apiGroups":[""],"resources":["pods"]}]}`,
			nil},
		"plain ClusterRole": {
			`{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"plain"},"rules":[]}`,
			`{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"plain"},"rules":[{"verbs":["*"],"apiGroups":["*"],"resources":["*"]}]}`,
			[]string{"/rules"}},
		"allocated clusterIP": {
			`{"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":{"clusterIP":"","ports":[{"port":80}]}}`,
			`{"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":{"clusterIP":"10.0.0.7","clusterIPs":["10.0.0.7"],"ports":[{"port":80}]}}`,
			nil},
		"headless Service changed": {
			`{"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":{"clusterIP":"None"}}`,
			`{"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":{"clusterIP":"10.0.0.7"}}`,
			[]string{"/spec/clusterIP"}},
		"injected caBundle": {
			`{"apiVersion":"admissionregistration.k8s.io/v1","kind":"ValidatingWebhookConfiguration","metadata":{"name":"w","annotations":{"cert-manager.io/inject-ca-from":"ns/cert"}},"webhooks":[{"name":"a","clientConfig":{"caBundle":"Cg=="}}]}`,
			`{"apiVersion":"admissionregistration.k8s.io/v1","kind":"ValidatingWebhookConfiguration","metadata":{"name":"w","annotations":{"cert-manager.io/inject-ca-from":"ns/cert"}},"webhooks":[{"name":"a","clientConfig":{"caBundle":"UkVBTA=="}}]}`,
			nil},
		"caBundle not injected": {
			`{"apiVersion":"admissionregistration.k8s.io/v1","kind":"ValidatingWebhookConfiguration","metadata":{"name":"w"},"webhooks":[{"name":"a","clientConfig":{"caBundle":"Cg=="}}]}`,
			`{"apiVersion":"admissionregistration.k8s.io/v1","kind":"ValidatingWebhookConfiguration","metadata":{"name":"w"},"webhooks":[{"name":"a","clientConfig":{"caBundle":"UkVBTA=="}}]}`,
			[]string{"/webhooks/0/clientConfig/caBundle"}},
	} {
		d := &unstructured.Unstructured{Object: live(t, tc.desired)}
		g.Expect(Diff(d.Object, live(t, tc.live), IgnoredPaths(nil, d))).To(Equal(tc.want), name)
	}
}

// Quantities compare by value only where built-in kinds hold quantities: elsewhere "1" and
// "1000m" are different strings, and an edit from one to the other is drift.
func TestQuantitiesCompareByValueOnlyInQuantityFields(t *testing.T) {
	g := NewWithT(t)
	desired := live(t, `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"size":"1"}},"data":{"cpu":"1"},"spec":{
	  "containers":[{"name":"c","env":[{"name":"N","value":"1"}],"resources":{"limits":{"cpu":"1","memory":"1Gi"},"requests":{"cpu":2}}}],
	  "volumes":[{"name":"v","emptyDir":{"sizeLimit":"1Gi"}}]}}`)
	l := live(t, `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"size":"1000m"}},"data":{"cpu":"1000m"},"spec":{
	  "containers":[{"name":"c","env":[{"name":"N","value":"1000m"}],"resources":{"limits":{"cpu":"1000m","memory":"1024Mi"},"requests":{"cpu":"2"}}}],
	  "volumes":[{"name":"v","emptyDir":{"sizeLimit":"1024Mi"}}]}}`)
	g.Expect(Diff(desired, l, nil)).To(Equal([]string{
		"/data/cpu",
		"/metadata/labels/size",
		"/spec/containers/0/env/0/value",
	}))
	g.Expect(quantityPath("/spec/metrics/0/resource/target/averageValue")).To(BeTrue())
	g.Expect(quantityPath("/spec/metrics/0/object/target/value")).To(BeTrue())
	g.Expect(quantityPath("/data/limits")).To(BeFalse())
}

// A List document is its items, as Helm installs them.
func TestAListDocumentIsItsItems(t *testing.T) {
	g := NewWithT(t)
	objs, err := ParseManifest(`---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}
- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}
---
apiVersion: v1
kind: Secret
metadata: {name: c}
`)
	g.Expect(err).NotTo(HaveOccurred())
	var names []string
	for _, o := range objs {
		names = append(names, o.GetKind()+"/"+o.GetName())
	}
	g.Expect(names).To(Equal([]string{"ConfigMap/a", "ConfigMap/b", "Secret/c"}))
}
