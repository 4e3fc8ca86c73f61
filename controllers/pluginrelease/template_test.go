package pluginrelease

import (
	"context"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

func render(tmpl string) (map[string]any, error) {
	prel := &pluginsv1.PluginRelease{Spec: pluginsv1.PluginReleaseSpec{ValuesTemplate: tmpl}}
	mc := &clustersv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "prod-a",
		Labels: map[string]string{"region": "eu-west-1", "tier": "prod"}}}
	return clusterValues(prel, map[string]any{"base": "kept"}, mc)
}

// Pure time: these are pure-logic checks of the renderer, no apiserver needed.
func TestValuesTemplateRendersPerCluster(t *testing.T) {
	g := NewWithT(t)
	v, err := render(`
region: {{ index .Cluster.Labels "region" | upper }}
name: {{ printf "%s-%03d" .Cluster.Name 7 }}
port: {{ add 30000 80 }}
labels:
{{- range $k, $v := .Cluster.Labels }}
  {{ $k }}: {{ $v | quote }}
{{- end }}
digest: {{ .Cluster.Name | sha256sum | trunc 8 }}
fallback: {{ .Cluster.Annotations.missing | default "none" }}`)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(v).To(HaveKeyWithValue("region", "EU-WEST-1"))
	g.Expect(v).To(HaveKeyWithValue("name", "prod-a-007"))
	g.Expect(v).To(HaveKeyWithValue("port", float64(30080)), "ordinary numbers are fine")
	g.Expect(v).To(HaveKeyWithValue("labels", map[string]any{"region": "eu-west-1", "tier": "prod"}))
	g.Expect(v).To(HaveKeyWithValue("fallback", "none"))
	g.Expect(v).To(HaveKeyWithValue("base", "kept"))
	g.Expect(v["digest"]).To(HaveLen(8))
}

func TestValuesTemplateRefusesWhatCouldHangOrExhaustTheManager(t *testing.T) {
	for name, tc := range map[string]struct{ tmpl, err string }{
		"range over an integer":  {`{{ range 1000000000000 }}{{ end }}`, "range over an integer"},
		"nested loops":           {`{{ $l := splitList "," (trimSuffix "," (cat (printf "%9999s" "") | replace " " "x,")) }}{{ range $l }}{{ range $l }}{{ end }}{{ end }}`, "loops more than"},
		"define":                 {`{{ define "x" }}a{{ end }}b`, "define and block are not allowed"},
		"template call":          {`{{ template "valuesTemplate" . }}`, "template calls are not allowed"},
		"huge printf width":      {`{{ printf "%0999999d" 1 }}`, "widths and precisions"},
		"star width":             {`{{ printf "%*d" 999999 1 }}`, "widths and precisions"},
		"large count":            {`{{ indent 999999 "x" }}`, "out of range"},
		"growing string":         {`{{ $a := printf "%9999s" "" }}{{ $b := cat $a $a $a $a $a $a $a $a $a $a }}{{ $c := cat $b $b $b $b $b $b $b $b $b $b }}{{ $d := cat $c $c $c }}`, "larger than"},
		"environment":            {`{{ env "HOME" }}`, `function "env" not defined`},
		"DNS":                    {`{{ getHostByName "example.com" }}`, `function "getHostByName" not defined`},
		"clock (redeploys)":      {`{{ now }}`, `function "now" not defined`},
		"randomness (redeploys)": {`{{ randAlphaNum 10 }}`, `function "randAlphaNum" not defined`},
		"repeat":                 {`{{ repeat 100 "x" }}`, `function "repeat" not defined`},
		"keys":                   {`{{ genPrivateKey "rsa" }}`, `function "genPrivateKey" not defined`},
		"indent of many lines":   {`{{ $a := printf "%9999s" "" | replace " " "\n" }}{{ indent 9999 $a }}`, "would be larger than"},
		"replace of nothing":     {`{{ replace "" "xxxx" "abc" }}`, "the string to replace is empty"},
		"empty regex":            {`{{ regexReplaceAll "x*" "abc" "yyyy" }}`, "matches the empty string"},
		"many printf widths":     {`{{ printf "` + strings.Repeat("%9999d", 40) + `" }}`, "would be larger than"},
		"a map set into itself":  {`{{ $d := dict }}{{ $_ := set $d "a" $d }}{{ $d }}`, `function "set" not defined`},
		"merge in place":         {`{{ $d := dict }}{{ $_ := merge $d (dict "a" $d) }}{{ $d }}`, `function "merge" not defined`},
		"doubling nested lists":  {`{{ $a := list (printf "%999s" "") }}{{ range list 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 }}{{ $a = list $a $a }}{{ end }}{{ $a }}`, "larger than"},
		"join of large strings":  {`{{ $s := printf "%9999s" "" }}{{ $l := list $s $s $s $s $s $s $s $s $s $s }}{{ $m := list $l $l $l $l $l $l $l $l $l $l }}{{ $n := list $m $m $m }}{{ toJson $n }}`, "larger than"},
		"costly regex":           {`{{ $s := printf "%9999s" "" }}{{ regexMatch "(?:(?: ?){30}){30}x" (cat $s $s $s $s $s $s $s $s $s $s) }}`, "too complex"},
		"long regex":             {`{{ regexMatch "` + strings.Repeat("a", 2000) + `" "a" }}`, "longer than 1024"},
		"doubling lists":         {`{{ $l := list 1 }}{{ range list 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 }}{{ $l = concat $l $l }}{{ end }}`, "more than 10000 elements"},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			start := time.Now()
			_, err := render(tc.tmpl)
			g.Expect(err).To(MatchError(ContainSubstring(tc.err)))
			g.Expect(time.Since(start)).To(BeNumerically("<", templateTimeout), "refused, not timed out")
		})
	}
}

func TestValuesTemplateOutputIsCapped(t *testing.T) {
	g := NewWithT(t)
	// 200 KiB lines, 10 of them: each call is within bounds, the output is not.
	_, err := render(`{{ $a := printf "%9999s" "" }}{{ $b := cat $a $a $a $a $a $a $a $a $a $a $a $a $a $a $a $a $a $a $a $a }}` +
		strings.Repeat(`{{ $b }}{{ $b }}{{ $b }}{{ $b }}{{ $b }}{{ $b }}`, 10))
	g.Expect(err).To(MatchError(ContainSubstring("renders more than")))
}

// Past its deadline every function call and range fails, so a render that overruns stops instead
// of running on after the caller gave up on it.
func TestARenderPastItsDeadlineStops(t *testing.T) {
	g := NewWithT(t)
	b := &renderBudget{deadline: time.Now().Add(-time.Millisecond)}
	for _, text := range []string{`{{ upper "a" }}`, `{{ printf "%s" "a" }}`, `{{ range . }}{{ end }}`} {
		tmpl, err := parseValuesTemplate(text, b)
		g.Expect(err).NotTo(HaveOccurred())
		// The data is a list, so the range reaches paddockRange without calling a function first.
		g.Expect(tmpl.Execute(&strings.Builder{}, []int{1})).To(MatchError(errDeadline), text)
	}
	tmpl, err := parseValuesTemplate(`{{ upper "a" }}`, &renderBudget{deadline: time.Now().Add(time.Minute)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(tmpl.Execute(&strings.Builder{}, nil)).To(Succeed())
}

// spec.values shares the object with the status of up to MaxTargetClusters targets: large values
// are refused with a pointer to valuesFrom.
func TestLargeSpecValuesAreRefused(t *testing.T) {
	g := NewWithT(t)
	big := `{"blob":"` + strings.Repeat("x", maxSpecValuesBytes) + `"}`
	prel := &pluginsv1.PluginRelease{Spec: pluginsv1.PluginReleaseSpec{Values: jsonValues(big)}}
	_, _, err := baseValues(context.Background(), nil, prel, nil, nil)
	g.Expect(err).To(MatchError(ContainSubstring("spec.valuesFrom")))
	prel.Spec.Values = jsonValues(`{"small":1}`)
	v, _, err := baseValues(context.Background(), nil, prel, nil, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(v).To(HaveKey("small"))
}
