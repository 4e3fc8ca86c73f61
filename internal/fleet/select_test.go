package fleet

import (
	"context"
	"errors"
	"testing"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/internal/scheme"
)

func TestSelectIsTheUnionOfNamesAndSelectorWithoutDeletedClusters(t *testing.T) {
	g := NewWithT(t)
	mc := func(name, env string, deleting bool) *clustersv1.MemberCluster {
		o := &clustersv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"env": env}}}
		if deleting {
			now := metav1.Now()
			o.DeletionTimestamp, o.Finalizers = &now, []string{"test"}
		}
		return o
	}
	c := fake.NewClientBuilder().WithScheme(scheme.New()).
		WithObjects(mc("a", "prod", false), mc("b", "dev", false), mc("c", "prod", true), mc("d", "dev", false)).Build()
	keys := func(names []string, sel *metav1.LabelSelector) []string {
		got, err := Select(context.Background(), c, names, sel, "spec.targets")
		g.Expect(err).NotTo(HaveOccurred())
		var out []string
		for n := range got {
			out = append(out, n)
		}
		return out
	}
	g.Expect(keys([]string{"b", "missing", "c"}, nil)).To(ConsistOf("b"), "names only: missing and deleting ones left out")
	g.Expect(keys([]string{"b"}, &metav1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}})).To(ConsistOf("a", "b"))
	g.Expect(keys(nil, &metav1.LabelSelector{})).To(ConsistOf("a", "b", "d"), "{} selects all")

	_, err := Select(context.Background(), c, nil, &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: "env", Operator: "Near"}}}, "spec.clusters")
	var se *SelectorError
	g.Expect(errors.As(err, &se)).To(BeTrue())
	g.Expect(se.Error()).To(HavePrefix("spec.clusters.clusterSelector: "))
}
