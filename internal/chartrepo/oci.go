package chartrepo

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/errcode"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

// Registry is an OCI registry holding charts under a path: oci://host[:port]/path.
type Registry struct {
	// Host is host[:port]; Path the repository prefix charts live under (charts are Path/<name>).
	Host, Path string
	plainHTTP  bool
	client     *auth.Client
}

// NewRegistry checks an oci:// URL and builds its client. plainHTTP (spec.insecure) talks http
// instead of https; credentials are then refused.
func NewRegistry(o Options, rawURL string, creds Credentials, plainHTTP bool) (*Registry, error) {
	if !strings.HasPrefix(rawURL, "oci://") {
		return nil, fail(pluginsv1.ReasonURLNotAllowed, "an oci repository's url must start with oci://")
	}
	scheme := "https"
	if plainHTTP {
		scheme = "http"
	}
	u, err := checkURL(o, scheme+"://"+strings.TrimPrefix(rawURL, "oci://"), creds, plainHTTP)
	if err != nil {
		return nil, err
	}
	if u.RawQuery != "" || u.ForceQuery {
		return nil, fail(pluginsv1.ReasonURLNotAllowed, "an oci url has no query")
	}
	hc := newHTTPClient(o, creds, &url.URL{Scheme: scheme, Host: u.Host}, true)
	ac := &auth.Client{Client: hc, Cache: auth.NewCache()}
	if o.UserAgent != "" {
		ac.SetUserAgent(o.UserAgent)
	}
	switch {
	case creds.Username != "":
		ac.Credential = auth.StaticCredential(u.Host, auth.Credential{Username: creds.Username, Password: creds.Password})
	case creds.Token != "":
		ac.Credential = auth.StaticCredential(u.Host, auth.Credential{AccessToken: creds.Token})
	}
	return &Registry{Host: u.Host, Path: strings.Trim(u.Path, "/"), plainHTTP: plainHTTP, client: ac}, nil
}

// Ping checks that the registry answers the OCI distribution API and accepts the credentials.
func (r *Registry) Ping(ctx context.Context) error {
	reg, err := remote.NewRegistry(r.Host)
	if err != nil {
		return fail(pluginsv1.ReasonURLNotAllowed, "the url does not name a registry: %s", firstLine(err.Error()))
	}
	reg.Client, reg.PlainHTTP = r.client, r.plainHTTP
	if err := reg.Ping(ctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return registryError(err)
	}
	return nil
}

// HTTPClient is the registry's authenticating client (for Helm's registry client).
func (r *Registry) HTTPClient() *auth.Client { return r.client }

// PlainHTTP tells whether the registry is reached over plain http.
func (r *Registry) PlainHTTP() bool { return r.plainHTTP }

func registryError(err error) error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var resp *errcode.ErrorResponse
	if errors.As(err, &resp) {
		switch resp.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fail(pluginsv1.ReasonUnauthorized, "the registry refused access (HTTP %d); check the credentials in spec.secretRef", resp.StatusCode)
		case http.StatusNotFound:
			return fail(pluginsv1.ReasonNotFound, "the host does not serve the OCI distribution API (HTTP 404 for /v2/)")
		default:
			return fail(pluginsv1.ReasonRepositoryNotReachable, "the registry answered HTTP %d", resp.StatusCode)
		}
	}
	if errors.Is(err, errdef.ErrNotFound) {
		return fail(pluginsv1.ReasonNotFound, "the host does not serve the OCI distribution API (HTTP 404 for /v2/)")
	}
	return classify(err)
}
