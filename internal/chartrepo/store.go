package chartrepo

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// Source is what the PluginRepository controller hands to the controllers that install charts:
// the repository's last good index (helm) or its checked registry (oci), and the credentials to
// download with. It lives in memory only; credentials never reach status, events or logs.
type Source struct {
	// UID is the PluginRepository's UID (a repository recreated under the same name is another).
	UID types.UID
	// URL and Type are the spec the source was built from.
	URL, Type string
	// Index is the last good index (helm repositories).
	Index *Index
	// Registry is the checked registry (oci repositories).
	Registry *Registry
	// Credentials are the Secret's, as of the last good fetch.
	Credentials Credentials
	// FetchedAt is when Index was fetched (or the registry answered).
	FetchedAt time.Time
	// Private: charts were downloaded with credentials, so their cache entries are this
	// repository's alone (kept when the credentials are withdrawn).
	Private bool
}

// WithoutCredentials is the Source that keeps serving when its credentials are withdrawn (the
// Secret deleted, or no longer valid): a Helm repository's index still resolves what releases
// run and its cached charts still serve them, but nothing is downloaded with the old
// credentials. A registry's client holds them, so an OCI repository serves nothing until it is
// fetched again with credentials.
func (s *Source) WithoutCredentials() *Source {
	c := *s
	c.Private = s.Private || s.Credentials.Authenticates()
	c.Credentials, c.Registry = Credentials{}, nil
	return &c
}

// Store holds every repository's Source by PluginRepository name.
type Store struct {
	mu sync.RWMutex
	m  map[string]*Source
}

// NewStore returns an empty store.
func NewStore() *Store { return &Store{m: map[string]*Source{}} }

// Get returns the Source of a repository.
func (s *Store) Get(name string) (*Source, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	src, ok := s.m[name]
	return src, ok
}

// Set replaces a repository's Source. Sources are immutable once set.
func (s *Store) Set(name string, src *Source) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[name] = src
}

// Delete drops a repository's Source.
func (s *Store) Delete(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, name)
}
