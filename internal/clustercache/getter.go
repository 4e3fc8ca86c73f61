package clustercache

import (
	"net/http"
	"sync"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// RESTClientGetter returns a genericclioptions.RESTClientGetter for Helm's action.Configuration
// (and anything else built on cli-runtime) that talks to the member through its shared transport:
// every client Helm builds from it reuses the member's connections, credentials, dialer policy,
// response cap and redirect refusal instead of opening its own pool. namespace is the default
// namespace of the actions. Discovery is cached per getter (one per action), never per member.
func (a *Accessor) RESTClientGetter(namespace string) genericclioptions.RESTClientGetter {
	return &restClientGetter{acc: a, namespace: namespace}
}

type restClientGetter struct {
	acc       *Accessor
	namespace string

	once   sync.Once
	disc   discovery.CachedDiscoveryInterface
	mapper meta.RESTMapper
	err    error
}

var _ genericclioptions.RESTClientGetter = (*restClientGetter)(nil)

// ToRESTConfig returns a config whose Transport is the member's shared one. The TLS and auth
// fields are cleared: the transport carries them (client-go refuses both at once).
func (g *restClientGetter) ToRESTConfig() (*rest.Config, error) {
	cfg := rest.CopyConfig(g.acc.Config)
	cfg.TLSClientConfig = rest.TLSClientConfig{}
	cfg.BearerToken, cfg.BearerTokenFile, cfg.Username, cfg.Password = "", "", "", ""
	cfg.Dial, cfg.Proxy, cfg.WrapTransport = nil, nil, nil
	cfg.Transport = g.acc.httpClient.Transport
	return cfg, nil
}

func (g *restClientGetter) init() {
	g.once.Do(func() {
		var dc *discovery.DiscoveryClient
		dc, g.err = discovery.NewDiscoveryClientForConfigAndClient(g.acc.Config, g.acc.httpClient)
		if g.err != nil {
			return
		}
		g.disc = memory.NewMemCacheClient(dc)
		g.mapper = restmapper.NewDeferredDiscoveryRESTMapper(g.disc)
	})
}

func (g *restClientGetter) ToDiscoveryClient() (discovery.CachedDiscoveryInterface, error) {
	g.init()
	return g.disc, g.err
}

func (g *restClientGetter) ToRESTMapper() (meta.RESTMapper, error) {
	g.init()
	return g.mapper, g.err
}

// ToRawKubeConfigLoader serves only the namespace: nothing is ever loaded from a file or the
// environment.
func (g *restClientGetter) ToRawKubeConfigLoader() clientcmd.ClientConfig {
	return namespaceOnly{getter: g}
}

type namespaceOnly struct{ getter *restClientGetter }

func (n namespaceOnly) RawConfig() (clientcmdapi.Config, error) { return clientcmdapi.Config{}, nil }
func (n namespaceOnly) ClientConfig() (*rest.Config, error)     { return n.getter.ToRESTConfig() }
func (n namespaceOnly) Namespace() (string, bool, error) {
	ns := n.getter.namespace
	if ns == "" {
		ns = "default"
	}
	return ns, n.getter.namespace != "", nil
}
func (n namespaceOnly) ConfigAccess() clientcmd.ConfigAccess { return nil }

// sharedTransport is the RoundTripper every client of the accessor uses (for tests).
func (a *Accessor) sharedTransport() http.RoundTripper { return a.httpClient.Transport }
