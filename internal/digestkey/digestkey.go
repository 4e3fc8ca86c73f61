// Package digestkey keeps the key that Paddock's status digests are computed with.
//
// Some digests in status cover Secret values: a PluginRelease's configDigest covers its values,
// valuesFrom Secrets included, and a manifestDigest covers a rendered manifest, which may hold
// Secrets. Whoever may read the status could test guesses of a short secret value against a plain
// hash offline. Keyed with a secret that only the manager reads (HMAC-SHA256), a digest tells them
// nothing.
//
// The key lives in a Secret in the manager's namespace. The manager creates it on its first
// start, and every replica and every later start reads the same one. A new key changes every
// digest, so each PluginRelease target is looked at once (a target already running the desired
// chart and values is recorded without a Helm action).
package digestkey

import (
	"context"
	"crypto/rand"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

const (
	// DataKey is the Secret's data key that holds the key.
	DataKey = "key"
	// MinBytes is the shortest key accepted; a new key has this many random bytes.
	MinBytes = 32
	// DefaultSecretName is the Secret's name unless --digest-key-secret says otherwise.
	DefaultSecretName = "paddock-digest-key"
)

// Ensure returns the key held by Secret namespace/name, creating the Secret with a random key if
// it does not exist. Replicas starting together agree: the one whose create loses reads the
// winner's. reader must read uncached (the manager's cache is not started yet, and a cached read
// could miss a Secret another replica just created).
func Ensure(ctx context.Context, reader client.Reader, writer client.Writer, namespace, name string) ([]byte, error) {
	key, err := read(ctx, reader, namespace, name)
	if err == nil || !apierrors.IsNotFound(err) {
		return key, err
	}
	b := make([]byte, MinBytes)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("generating the digest key: %w", err)
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace, Name: name,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "paddock"},
			Annotations: map[string]string{"paddock.dev/purpose": "Keys the digests in Paddock's status " +
				"(PluginRelease configDigest, manifestDigest). Deleting it makes every PluginRelease target be checked once against its member."},
		},
		Type:      corev1.SecretTypeOpaque,
		Immutable: ptr(true),
		Data:      map[string][]byte{DataKey: b},
	}
	switch err := writer.Create(ctx, secret); {
	case err == nil:
		return b, nil
	case apierrors.IsAlreadyExists(err):
		return read(ctx, reader, namespace, name)
	default:
		return nil, fmt.Errorf("creating the digest key Secret %s/%s: %w", namespace, name, err)
	}
}

func read(ctx context.Context, reader client.Reader, namespace, name string) ([]byte, error) {
	secret := &corev1.Secret{}
	if err := reader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, err
		}
		return nil, fmt.Errorf("reading the digest key Secret %s/%s: %w", namespace, name, err)
	}
	key := secret.Data[DataKey]
	if len(key) < MinBytes {
		return nil, fmt.Errorf("the digest key Secret %s/%s has no data key %q of at least %d bytes "+
			"(delete it and the manager creates a new one, or put %d random bytes there)", namespace, name, DataKey, MinBytes, MinBytes)
	}
	return key, nil
}

func ptr[T any](v T) *T { return &v }
