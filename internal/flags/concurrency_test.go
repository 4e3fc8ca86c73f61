package flags

import (
	"flag"
	"testing"

	. "github.com/onsi/gomega"
)

func TestConcurrencyFlag(t *testing.T) {
	g := NewWithT(t)
	c := Concurrency{}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Var(c, "concurrency", "")
	g.Expect(fs.Parse([]string{"--concurrency=membercluster=50,PluginRelease=4", "--concurrency", "workspace=2"})).To(Succeed())
	g.Expect(c.For("membercluster", 1)).To(Equal(50))
	g.Expect(c.For("pluginrelease", 1)).To(Equal(4))
	g.Expect(c.For("workspace", 1)).To(Equal(2))
	g.Expect(c.For("rolegrant", 7)).To(Equal(7))
	g.Expect(c.String()).To(Equal("membercluster=50,pluginrelease=4,workspace=2"))

	for _, bad := range []string{"membercluster", "=3", "x=0", "x=abc", "x=1001"} {
		g.Expect(Concurrency{}.Set(bad)).To(HaveOccurred(), bad)
	}
}
