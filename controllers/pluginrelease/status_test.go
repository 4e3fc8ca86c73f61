package pluginrelease

import (
	"context"
	"errors"
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/internal/scheme"
)

// A pass that ends in an error keeps the verdict it could not revisit, but only for the
// generation that verdict was about: for a newer spec, Ready=True would let kubectl wait and
// kstatus take a spec no pass has acted on for done.
func TestAPassThatFailsKeepsOnlyTheVerdictOfItsOwnGeneration(t *testing.T) {
	g := NewWithT(t)
	ready := metav1.Condition{Type: pluginsv1.ReadyCondition, Status: metav1.ConditionTrue, Reason: ReasonSucceeded,
		Message: "hello 0.1.0 deployed to 1 clusters", ObservedGeneration: 1, LastTransitionTime: metav1.Now()}
	prel := &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{Name: "failing-pass", Namespace: "apps", UID: "uid-failing-pass", Generation: 1},
		Spec: pluginsv1.PluginReleaseSpec{Chart: pluginsv1.ChartReference{Repository: "charts", Name: "hello", Version: "0.1.0"}},
		Status: pluginsv1.PluginReleaseStatus{ObservedGeneration: 1, Conditions: []metav1.Condition{ready},
			Clusters: []pluginsv1.ClusterReleaseStatus{{Name: "m0", Phase: pluginsv1.PhaseDeployed}}}}
	c := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(prel).WithStatusSubresource(prel).Build()
	r := &Reconciler{Client: c, written: map[types.UID][]string{}, secrets: map[types.UID][]string{}}
	pass := func() *pluginsv1.PluginRelease {
		cur := &pluginsv1.PluginRelease{}
		g.Expect(c.Get(context.Background(), client.ObjectKeyFromObject(prel), cur)).To(Succeed())
		s := newScope(cur)
		s.passErr = errors.New("reading the values ConfigMap: the server is currently unable to handle the request")
		g.Expect(r.patchStatus(context.Background(), s)).To(Succeed())
		g.Expect(c.Get(context.Background(), client.ObjectKeyFromObject(prel), cur)).To(Succeed())
		return cur
	}

	// The same generation: Ready stays as it was.
	got := pass()
	g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, pluginsv1.ReadyCondition)).To(BeTrue())
	g.Expect(meta.FindStatusCondition(got.Status.Conditions, pluginsv1.ReconcilingCondition)).To(BeNil())

	// A new spec, and the pass fails: not Ready, in progress, the error said.
	got.Spec.Chart.Version = "0.2.0"
	got.Generation = 2
	g.Expect(c.Update(context.Background(), got)).To(Succeed())
	got = pass()
	g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
	rc := meta.FindStatusCondition(got.Status.Conditions, pluginsv1.ReadyCondition)
	g.Expect(rc.Status).To(Equal(metav1.ConditionFalse))
	g.Expect(rc.ObservedGeneration).To(Equal(got.Generation))
	g.Expect(rc.Message).To(ContainSubstring("unable to handle the request"))
	g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, pluginsv1.ReconcilingCondition)).To(BeTrue())
}
