package main

import (
	"testing"

	. "github.com/onsi/gomega"
)

func TestNamespaceFlags(t *testing.T) {
	g := NewWithT(t)
	any, err := namespaceList("*")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(any).To(BeNil(), "* is any namespace")
	none, err := namespaceList("")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(none).To(BeEmpty())
	g.Expect(none).NotTo(BeNil(), "empty is no namespace, not any")
	some, err := namespaceList(" team-a,team-b,team-a ")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(some).To(Equal([]string{"team-a", "team-b"}))
	_, err = namespaceList("Team_A")
	g.Expect(err).To(MatchError(ContainSubstring("is not a namespace name")))

	t.Setenv("POD_NAMESPACE", "paddock-system")
	own, err := kubeconfigSecretNamespaces("")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(own).To(Equal([]string{"paddock-system"}), "empty is the manager's own namespace")
	listed, err := kubeconfigSecretNamespaces("a,b")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(listed).To(Equal([]string{"a", "b"}))
}
