package helm

import (
	"bytes"
	"testing"

	. "github.com/onsi/gomega"
	yamlv3 "go.yaml.in/yaml/v3"
)

func run(t *testing.T, in string) string {
	t.Helper()
	out, err := labeller{value: "rabc"}.Run(bytes.NewBufferString(in))
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	return out.String()
}

func docs(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	dec := yamlv3.NewDecoder(bytes.NewBufferString(s))
	for {
		m := map[string]any{}
		if err := dec.Decode(&m); err != nil {
			return out
		}
		out = append(out, m)
	}
}

// The post-renderer adds the release label and changes nothing else: numbers keep their exact
// text (an integer beyond 2^53 used to come back rounded through a float64), and so do quoting,
// key order and comments.
func TestLabellerChangesNothingButTheLabel(t *testing.T) {
	g := NewWithT(t)
	in := `# Source: c/templates/cm.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: big
  labels:
    app: "x"
data:
  id: "9007199254740993"
spec:
  zebra: 9007199254740993
  alpha: 1.50
  octal: 0755
---
---
apiVersion: v1
kind: Secret
metadata: {name: s}
`
	out := run(t, in)
	g.Expect(out).To(ContainSubstring("zebra: 9007199254740993"))
	g.Expect(out).To(ContainSubstring("alpha: 1.50"))
	g.Expect(out).To(ContainSubstring("octal: 0755"))
	g.Expect(out).To(ContainSubstring(`app: "x"`))
	g.Expect(out).To(ContainSubstring("# Source: c/templates/cm.yaml"))
	g.Expect(bytes.Index([]byte(out), []byte("zebra")) < bytes.Index([]byte(out), []byte("alpha"))).To(BeTrue(), "key order kept")
	d := docs(t, out)
	g.Expect(d).To(HaveLen(2), "the empty document is dropped")
	for _, m := range d {
		g.Expect(m["metadata"]).To(HaveKeyWithValue("labels", HaveKeyWithValue(ReleaseLabel, "rabc")))
	}
	g.Expect(d[0]["metadata"].(map[string]any)["labels"]).To(HaveKeyWithValue("app", "x"))
}

// An anchored labels mapping used elsewhere (a selector) does not get the label there; labels
// brought in by a merge key are kept.
func TestLabellerLeavesAnchorsAndMergeKeysAlone(t *testing.T) {
	g := NewWithT(t)
	out := run(t, `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: &sel
    app: web
spec:
  replicas: 9007199254740993
  selector:
    matchLabels: *sel
---
apiVersion: v1
kind: ConfigMap
metadata:
  <<: {labels: {from: merge}}
  name: merged
`)
	d := docs(t, out)
	g.Expect(d).To(HaveLen(2))
	g.Expect(d[0]["metadata"].(map[string]any)["labels"]).To(HaveKeyWithValue(ReleaseLabel, "rabc"))
	g.Expect(d[0]["spec"].(map[string]any)["selector"].(map[string]any)["matchLabels"]).To(Equal(map[string]any{"app": "web"}), "the selector is unchanged")
	g.Expect(d[0]["spec"].(map[string]any)["replicas"]).To(Equal(9007199254740993))
	g.Expect(d[1]["metadata"].(map[string]any)["labels"]).To(Equal(map[string]any{"from": "merge", ReleaseLabel: "rabc"}))
}

func TestLabellerRefusesANonObjectDocument(t *testing.T) {
	_, err := labeller{value: "rabc"}.Run(bytes.NewBufferString("- a\n- b\n"))
	NewWithT(t).Expect(err).To(MatchError(ContainSubstring("not an object")))
}
