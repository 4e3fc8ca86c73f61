package membercluster

import (
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
)

// Bad input is refused at admission (kubectl apply) with a message that says what to fix.
func TestAdmissionValidation(t *testing.T) {
	ref := clustersv1.SecretKeyReference{Namespace: "ns", Name: "s"}
	d := func(s string) *metav1.Duration { v, _ := time.ParseDuration(s); return &metav1.Duration{Duration: v} }
	cases := []struct {
		name string
		spec clustersv1.MemberClusterSpec
		want string
	}{
		{"no-mode", clustersv1.MemberClusterSpec{}, "exactly one cluster mode must be set: spec.attach"},
		{"timeout-over-unhealthy", clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{KubeconfigSecretRef: ref},
			HealthCheck: clustersv1.HealthCheckSpec{Timeout: d("30s"), UnhealthyAfter: d("10s")}}, "healthCheck.timeout must not exceed healthCheck.unhealthyAfter"},
		{"period-over-unhealthy", clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{KubeconfigSecretRef: ref},
			HealthCheck: clustersv1.HealthCheckSpec{Period: d("1m"), UnhealthyAfter: d("30s")}}, "healthCheck.period must not exceed healthCheck.unhealthyAfter"},
		{"period-too-short", clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{KubeconfigSecretRef: ref},
			HealthCheck: clustersv1.HealthCheckSpec{Period: d("10ms")}}, "healthCheck.period must be between 1s and 1h"},
		{"threshold-zero", clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{KubeconfigSecretRef: ref},
			HealthCheck: clustersv1.HealthCheckSpec{SuccessThreshold: -1}}, "successThreshold"},
		{"bad-namespace", clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{KubeconfigSecretRef: clustersv1.SecretKeyReference{Namespace: "Bad_NS", Name: "s"}}}, "namespace"},
		{"bad-key", clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{KubeconfigSecretRef: clustersv1.SecretKeyReference{Namespace: "ns", Name: "s", Key: "a/b"}}}, "key"},
		{"bad-policy", clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{KubeconfigSecretRef: ref}, DeletionPolicy: "Keep"}, "deletionPolicy"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			mc := &clustersv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "invalid-" + tc.name}, Spec: tc.spec}
			err := mgmt.Create(ctx, mc)
			g.Expect(err).To(HaveOccurred())
			g.Expect(err.Error()).To(ContainSubstring(tc.want))
		})
	}

	// A name longer than a label value.
	g := NewWithT(t)
	long := &clustersv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: strings.Repeat("a", 64)},
		Spec: clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{KubeconfigSecretRef: ref}, Paused: true}}
	g.Expect(mgmt.Create(ctx, long)).To(MatchError(ContainSubstring("a MemberCluster name has at most 63 characters")))
	long.Name = strings.Repeat("a", 63)
	g.Expect(mgmt.Create(ctx, long)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, long) })

	// Defaults are applied at admission.
	mc := &clustersv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "defaults"},
		Spec: clustersv1.MemberClusterSpec{Attach: &clustersv1.AttachSpec{KubeconfigSecretRef: ref}, Paused: true}}
	g.Expect(mgmt.Create(ctx, mc)).To(Succeed())
	t.Cleanup(func() { _ = mgmt.Delete(ctx, mc) })
	g.Expect(mc.Spec.HealthCheck.GetPeriod()).To(Equal(5 * time.Second))
	g.Expect(mc.Spec.HealthCheck.GetTimeout()).To(Equal(5 * time.Second))
	g.Expect(mc.Spec.HealthCheck.GetUnhealthyAfter()).To(Equal(25 * time.Second))
	g.Expect(mc.Spec.HealthCheck.SuccessThreshold).To(Equal(int32(2)))
	g.Expect(mc.Spec.Attach.KubeconfigSecretRef.Key).To(Equal("value"))
	g.Expect(mc.Spec.DeletionPolicy).To(Equal(clustersv1.DeletionPolicyDelete))
}
